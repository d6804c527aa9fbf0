"""What the top-level scripts share (cli_demo.py, web_demo.py, api.py, utils.py, ptuning/): their flags and
error handling (cli), which checkpoint to load and how (hub, loader, multi_gpu), the errors a user can fix,
the check on text people type (text) and the gradio chat page (webui). The model itself lives in
``chatglm/`` and the HTTP serving in ``chatglm/serving/``."""
