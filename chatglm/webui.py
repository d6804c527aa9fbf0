"""The gradio chat page shared by ``web_demo.py`` and ``ptuning/web_demo.py``.

    from chatglm.webui import build_demo, launch
    demo = build_demo(tokenizer, model)          # a gradio.Blocks
    launch(demo, host="127.0.0.1", port=7860)

The page: a title, a chat window whose answers stream in and render as Markdown (code blocks, LaTeX
between ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]``), a multi-line input, Submit and Clear
History buttons, and sliders for Maximum length (0-4096), Top P (0-1) and Temperature (0-1). Each browser
session keeps its own history (``gr.State``). Requests go through gradio's queue; ``concurrency_limit``
answers are generated at once (default 1, so one model is never used by two generations together).
"""

import html
from collections.abc import Iterable, Sequence

from .generation import DEFAULT_MAX_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, generation_options

LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]



def history_to_messages(history: Iterable[Sequence[str]]) -> list[dict]:
    """[(question, answer), ...] -> gradio messages [{"role": "user", ...}, {"role": "assistant", ...}, ...]"""
    messages = []
    for question, answer in history:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    return messages


def build_demo(tokenizer, model, *, title: str = "ChatGLM", concurrency_limit: int = 1):
    """Build the chat page for ``model`` and return the (not yet launched) ``gradio.Blocks``."""
    import gradio as gr

    def take_input(text: str):
        # empties the input box at once and hands the text to `predict`
        return "", text

    def predict(query: str, max_length, top_p, temperature, history: list[tuple[str, str]]):
        history = [tuple(turn) for turn in (history or [])]
        if not query or not query.strip():  # empty input is ignored
            yield history_to_messages(history), history
            return
        messages = history_to_messages(history) + [{"role": "user", "content": query}]
        try:
            for response, new_history in model.stream_chat(
                    tokenizer, query, history=history, **generation_options(max_length, top_p, temperature)):
                yield messages + [{"role": "assistant", "content": response}], list(new_history)
        except ValueError as exc:
            gr.Warning(f"Could not answer: {exc}")
            yield history_to_messages(history), history

    def reset_state():
        return [], []

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.HTML(f"<h1 style='text-align: center'>{html.escape(title)}</h1>")
        chatbot = gr.Chatbot(label=title, height=480, latex_delimiters=LATEX_DELIMITERS,
                             render_markdown=True, elem_id="chatbot", buttons=["copy"])
        with gr.Row():
            with gr.Column(scale=4):
                user_input = gr.Textbox(show_label=False, placeholder="Input...", lines=6, max_lines=12,
                                        elem_id="user-input")
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
            with gr.Column(scale=1):
                clear = gr.Button("Clear History", elem_id="clear-history")
                max_length = gr.Slider(0, 4096, value=DEFAULT_MAX_LENGTH, step=1, label="Maximum length",
                                       interactive=True, elem_id="max-length")
                top_p = gr.Slider(0, 1, value=DEFAULT_TOP_P, step=0.01, label="Top P", interactive=True,
                                  elem_id="top-p")
                temperature = gr.Slider(0, 1, value=DEFAULT_TEMPERATURE, step=0.01, label="Temperature",
                                        interactive=True, elem_id="temperature")
        history = gr.State([])
        pending_query = gr.State("")

        answering = submit.click(take_input, [user_input], [user_input, pending_query], queue=False,
                                 show_progress="hidden").then(
            predict, [pending_query, max_length, top_p, temperature, history], [chatbot, history],
            concurrency_limit=concurrency_limit, show_progress="hidden")
        # Clear History also stops an answer that is still being written
        clear.click(reset_state, outputs=[chatbot, history], queue=False, show_progress="hidden",
                    cancels=[answering])
    return demo


def launch(demo, *, host: str = "127.0.0.1", port=None, share: bool = False, concurrency_limit: int = 1,
           **kwargs):
    """Start serving ``demo`` (blocking) with the request queue on."""
    demo.queue(default_concurrency_limit=concurrency_limit)
    return demo.launch(server_name=host, server_port=port, share=share, inbrowser=False, **kwargs)
