"""web_demo.py served on a free port and used in headless Chromium through selenium."""

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from _doors import ServerProcess, free_port

pytestmark = pytest.mark.slow  # the web demo as a server process, driven by a browser

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# docs/web_demo.png is the screenshot this test takes; WEB_DEMO_SCREENSHOT=docs/web_demo.png refreshes it
# (by default it goes to a temporary folder, so running the tests leaves the checkout as it was)
SCREENSHOT = os.environ.get("WEB_DEMO_SCREENSHOT")


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1100",
                 "--lang=zh-CN"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def web_server(door_checkpoint, script_env):
    with ServerProcess("web_demo.py", ["--model", door_checkpoint, "--device", "cpu"], free_port(), script_env,
                       ready_path="/", startup_timeout=180) as proc:
        yield proc


def _wait(driver, condition, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while True:
        try:
            value = condition(driver)
        except Exception:  # elements come and go while gradio re-renders
            value = None
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _messages(driver, role):
    from selenium.webdriver.common.by import By

    return [element.text for element in
            driver.find_elements(By.CSS_SELECTOR, f"#chatbot [data-testid='{role}']")]


def _set_slider(driver, elem_id, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type='number']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)
    box.send_keys(Keys.TAB)
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type='range']")
          .get_attribute("value") == str(value), what=f"slider {elem_id} to show {value}")


def _wait_until_stable(driver, rounds=60):
    """Wait until the answers stop growing (the stream has ended)."""
    previous = None
    for _ in range(rounds):
        current = _messages(driver, "bot")
        if current == previous:
            return current
        previous = current
        time.sleep(0.7)
    return previous


def test_chat_in_the_browser(web_server, browser, door_model, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(web_server.url)
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#user-input textarea"), timeout=90,
          what="the input box")
    assert driver.title == "ChatGLM"
    assert "ChatGLM" in driver.find_element(By.TAG_NAME, "h1").text
    for label in ("Maximum length", "Top P", "Temperature", "Submit", "Clear History"):
        assert label in driver.find_element(By.TAG_NAME, "body").text

    # sliders: their defaults, then a short Maximum length so the answer stays quick
    assert driver.find_element(By.CSS_SELECTOR, "#max-length input[type='range']").get_attribute("value") == "2048"
    assert driver.find_element(By.CSS_SELECTOR, "#top-p input[type='range']").get_attribute("value") == "0.7"
    assert driver.find_element(By.CSS_SELECTOR, "#temperature input[type='range']").get_attribute("value") == "0.95"
    _set_slider(driver, "max-length", 96)
    _set_slider(driver, "temperature", 0)  # greedy: the answers can be checked against model.chat
    tokenizer, model = door_model
    first, history = model.chat(tokenizer, "你好", max_length=96, do_sample=False)
    second, _ = model.chat(tokenizer, "用 Python 写一个计算阶乘的函数", history=history, max_length=400,
                           do_sample=False)

    # an empty input is ignored
    driver.find_element(By.CSS_SELECTOR, "button#submit").click()
    time.sleep(1.0)
    assert _messages(driver, "user") == []

    box = driver.find_element(By.CSS_SELECTOR, "#user-input textarea")
    box.send_keys("你好")
    driver.find_element(By.CSS_SELECTOR, "button#submit").click()
    _wait(driver, lambda d: _messages(d, "user") == ["你好"], what="the question in the chat")
    answer = _wait(driver, lambda d: [text for text in _messages(d, "bot") if text.strip()], timeout=120,
                   what="an answer in the chat")
    assert driver.find_element(By.CSS_SELECTOR, "#user-input textarea").get_attribute("value") == ""
    assert answer
    shown = _wait_until_stable(driver)
    assert len(shown) == 1
    # the bundled model's first answer is text that Markdown shows as is, so the page must show it exactly
    assert not re.search(r"[*_`$#<>\[\]|~\\]|^\s*\d+\.", first), first
    assert " ".join(shown[0].split()) == " ".join(first.split())

    # a second round with a longer Maximum length: answers render as Markdown, so code the model writes
    # in a fenced block shows as a code block
    _set_slider(driver, "max-length", 400)
    box = driver.find_element(By.CSS_SELECTOR, "#user-input textarea")
    box.send_keys("用 Python 写一个计算阶乘的函数")
    driver.find_element(By.CSS_SELECTOR, "button#submit").click()
    _wait(driver, lambda d: len(_messages(d, "user")) == 2 and len(_messages(d, "bot")) == 2, timeout=120,
          what="the second round")
    _wait_until_stable(driver)
    assert "```" in second, second  # the bundled model answers this with a fenced code block
    code = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot'] pre"),
                 what="a rendered code block")
    fenced = second.split("```", 2)[1].split("\n", 1)[1]
    assert fenced.strip().splitlines()[0] in code[-1].text
    screenshot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "web_demo.png"
    driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000

    # Clear History empties the chat (and the session history)
    driver.find_element(By.CSS_SELECTOR, "button#clear-history").click()
    _wait(driver, lambda d: _messages(d, "user") == [] and _messages(d, "bot") == [], what="an empty chat")
    # the chat is redrawn from the session history, so after a clear only the new round shows
    box = driver.find_element(By.CSS_SELECTOR, "#user-input textarea")
    box.send_keys("再见")
    driver.find_element(By.CSS_SELECTOR, "button#submit").click()
    _wait(driver, lambda d: _messages(d, "user") == ["再见"], what="only the new question")


def test_page_layout_and_streaming(door_model):
    """The page as built by chatglm.entrypoints.webui.build_demo, and its answer function streaming in-process."""
    import gradio as gr

    from chatglm.entrypoints.webui import build_demo

    tokenizer, model = door_model
    demo = build_demo(tokenizer, model)
    components = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    chatbot = components["chatbot"]
    assert isinstance(chatbot, gr.Chatbot)
    assert {"left": "$$", "right": "$$", "display": True} in chatbot.latex_delimiters
    assert {"left": "$", "right": "$", "display": False} in chatbot.latex_delimiters
    assert chatbot.render_markdown
    sliders = {key: (components[key].minimum, components[key].maximum, components[key].value)
               for key in ("max-length", "top-p", "temperature")}
    assert sliders == {"max-length": (0, 4096, 2048), "top-p": (0, 1, 0.7), "temperature": (0, 1, 0.95)}
    assert components["user-input"].lines > 1

    predict = next(fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "predict")
    steps = list(predict("你好", 64, 0.7, 0, []))
    messages, history = steps[-1]
    assert len(steps) >= 2, "answers stream: one update per generated token"
    expected, _ = model.chat(tokenizer, "你好", history=[], max_length=64, do_sample=False)
    assert history == [("你好", expected)]
    assert messages == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": expected}]
    # a second round shows both; an empty input changes nothing
    messages, history2 = list(predict("再见", 96, 0.7, 0, history))[-1]
    assert [m["content"] for m in messages][:3] == ["你好", expected, "再见"] and len(history2) == 2
    assert list(predict("   ", 64, 0.7, 0.95, history)) == [(messages[:2], history)]


def test_sessions_answer_together_and_a_left_answer_stops(door_model):
    """Two sessions asking at once are answered by one batch, each as model.chat would alone; an answer
    whose session goes away (Clear History closes its stream) stops being generated."""
    import threading

    from chatglm.entrypoints.webui import build_demo

    tokenizer, model = door_model
    demo = build_demo(tokenizer, model, max_batch_size=2)
    predict = next(fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "predict")
    questions = ["晚上睡不着应该怎么办", "用 Python 写一个计算阶乘的函数"]
    answers = {}
    go = threading.Barrier(2)

    def ask(question):
        go.wait()
        answers[question] = list(predict(question, 300, 0.7, 0, []))[-1][1]

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for question in questions:
        expected, _ = model.chat(tokenizer, question, history=[], max_length=300, do_sample=False)
        assert answers[question] == [(question, expected)]
    # one after another, every token but each answer's first (sampled after its prefill) takes a step of its own
    stats = demo.engine.stats()
    assert stats["steps"] <= stats["generated_tokens"] - 2 - 5, stats  # together: steps serve both

    stream = predict("你好", 2048, 0.7, 0.95, [])
    next(stream)
    stream.close()  # what gradio does when Clear History cancels the event
    deadline = time.time() + 10
    while demo.engine.stats()["finished_cancelled"] < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert demo.engine.stats()["finished_cancelled"] == 1 and demo.engine.stats()["running"] == 0
    demo.engine.stop()
