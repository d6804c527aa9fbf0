"""cli_demo.py as users run it: in a pseudo-terminal, and through a pipe."""

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time

import pytest
from _doors import REPO_ROOT

CLEAR = "\x1b[H\x1b[2J"
MAX_LENGTH = 40


def _take_terminal():
    # new session with the pseudo-terminal as controlling terminal, so that Ctrl-C becomes SIGINT
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """cli_demo.py with a pseudo-terminal as stdin, stdout and stderr."""

    def __init__(self, args, env, ignore_sigint=False):
        """``ignore_sigint``: start it with SIGINT ignored, as a parent that ignores it would."""
        self.master, slave = pty.openpty()

        def before_exec():
            _take_terminal()
            if ignore_sigint:
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "cli_demo.py"), *args], cwd=str(REPO_ROOT),
                                     env=dict(env, TERM="xterm"), stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=before_exec)
        os.close(slave)
        self.buffer = ""
        self._raw = b""

    def read_until(self, pattern, timeout=60.0, start=0):
        """Read until ``pattern`` (a regex) matches the output after ``start``; return the match."""
        deadline = time.time() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.buffer, start)
            if match:
                return match
            remaining = deadline - time.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; output so far:\n{self.buffer[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    if self.proc.poll() is not None:
                        raise AssertionError(f"cli_demo.py exited ({self.proc.returncode}) before {pattern!r}:\n"
                                             f"{self.buffer[-3000:]}")
                    continue
                self._raw += chunk
                text = self._raw.decode("utf-8", errors="replace")
                # drop readline's mode switches (bracketed paste) and carriage returns; keep screen clears
                self.buffer = re.sub(r"\x1b\[\?\d+[hl]", "", text).replace("\r", "")

    def wait_for_prompt(self, start=0, timeout=60.0, quiet=0.5):
        """Wait until the program shows the ``用户：`` prompt and then stays silent for ``quiet`` seconds
        (so a prompt-like text in the middle of a redraw does not count)."""
        deadline = time.time() + timeout
        while True:
            self.read_until(r"用户：$", timeout=max(deadline - time.time(), 0.1), start=start)
            seen = len(self._raw)
            ready, _, _ = select.select([self.master], [], [], quiet)
            if not ready and len(self._raw) == seen:
                return self.buffer
            if time.time() > deadline:
                raise AssertionError(f"no quiet prompt; output so far:\n{self.buffer[-3000:]}")
            chunk = os.read(self.master, 65536) if ready else b""
            self._raw += chunk
            text = self._raw.decode("utf-8", errors="replace")
            self.buffer = re.sub(r"\x1b\[\?\d+[hl]", "", text).replace("\r", "")

    def send(self, text):
        os.write(self.master, text if isinstance(text, bytes) else text.encode("utf-8"))

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.mark.slow
def test_interactive_session(door_checkpoint, door_model, script_env):
    tokenizer, model = door_model
    first, history = model.chat(tokenizer, "你好", history=[], max_length=MAX_LENGTH, do_sample=False)
    second, _ = model.chat(tokenizer, "再说一遍", history=history, max_length=MAX_LENGTH, do_sample=False)
    term = Terminal(["--model", door_checkpoint, "--max-length", str(MAX_LENGTH), "--temperature", "0",
                     "--device", "cpu"], script_env)
    try:
        term.read_until(r"clear.*stop.*\n", timeout=120)
        term.wait_for_prompt(timeout=120)
        mark = len(term.buffer)
        term.send("你好\n")
        # the answer is redrawn while it streams: the screen is cleared and the conversation printed again
        term.wait_for_prompt(start=mark)
        after = term.buffer[mark:]
        assert after.count(CLEAR) >= 2, "the streaming answer should redraw the screen at least twice"
        last_screen = after[after.rindex(CLEAR) + len(CLEAR):]
        assert "clear" in last_screen.split("\n", 1)[0]  # the welcome line stays on top
        assert last_screen.endswith(f"\n\n用户：你好\n\nChatGLM-6B：{first}\n\n用户：")

        # a second round keeps the first one on screen
        mark = len(term.buffer)
        term.send("再说一遍\n")
        term.wait_for_prompt(start=mark)
        screen = term.buffer[term.buffer.rindex(CLEAR):]
        assert screen.endswith(f"\n\n用户：你好\n\nChatGLM-6B：{first}"
                               f"\n\n用户：再说一遍\n\nChatGLM-6B：{second}\n\n用户：")

        # a line of invalid UTF-8 and a question too long for --max-length: one line each, the session goes on
        mark = len(term.buffer)
        term.send(b"\xff\xfe\n")
        term.wait_for_prompt(start=mark)
        assert "error: the input is not valid UTF-8; type it again\n" in term.buffer[mark:]
        mark = len(term.buffer)
        term.send("你好" * MAX_LENGTH + "\n")
        term.wait_for_prompt(start=mark)
        errors = [line for line in term.buffer[mark:].splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"max_length={MAX_LENGTH}" in errors[0], term.buffer[mark:]
        assert "Traceback" not in term.buffer

        # clear: history and screen are emptied
        mark = len(term.buffer)
        term.send("clear\n")
        term.wait_for_prompt(start=mark)
        screen = term.buffer[term.buffer.rindex(CLEAR):]
        assert "你好" not in screen

        # stop ends the program
        term.send("stop\n")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


@pytest.mark.slow
def test_ctrl_c_stops_only_the_answer(tiny_checkpoint, script_env):
    # the random tiny model rarely ends an answer, so with a large max_length Ctrl-C arrives while the
    # answer is still being written
    term = Terminal(["--model", tiny_checkpoint, "--max-length", "500", "--device", "cpu"], script_env,
                    ignore_sigint=True)  # as a parent that ignores SIGINT (pytest-xdist's workers): no matter
    try:
        term.wait_for_prompt(timeout=120)
        term.send("\x03")  # Ctrl-C at the prompt: a fresh prompt, the program goes on
        term.read_until(r"用户：(\^C)?\n+用户：$", timeout=30)
        mark = len(term.buffer)
        term.send("请写一篇很长很长的文章，介绍中国的历史。\n")
        term.read_until(r"ChatGLM-6B：", start=mark)
        term.send("\x03")  # Ctrl-C: the pseudo-terminal turns it into SIGINT
        term.wait_for_prompt(start=mark, timeout=60)
        assert term.proc.poll() is None, "Ctrl-C during an answer must not end the program"
        term.send("stop\n")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


@pytest.mark.slow
def test_piped_input_gives_plain_answers_and_survives_bad_lines(door_checkpoint, door_model, script_env):
    tokenizer, model = door_model
    first, history = model.chat(tokenizer, "你好", history=[], max_length=MAX_LENGTH, do_sample=False)
    second, _ = model.chat(tokenizer, "晚上睡不着应该怎么办", history=history, max_length=MAX_LENGTH,
                           do_sample=False)
    fresh, _ = model.chat(tokenizer, "你好", history=[], max_length=MAX_LENGTH, do_sample=False)

    invalid_utf8 = b"\xe4\xbd caf\xe9\n"  # a cut-off character and a Latin-1 byte
    long_line = ("很长的问题" * 7_000 + "\n").encode("utf-8")  # 105 KB
    lines = (b"\xe4\xbd\xa0\xe5\xa5\xbd\n\n" + invalid_utf8 + long_line
             + "晚上睡不着应该怎么办\nclear\n你好\nstop\nthis line is never read\n".encode())
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "cli_demo.py"), "--model", door_checkpoint, "--max-length",
         str(MAX_LENGTH), "--temperature", "0", "--device", "cpu"],
        input=lines, capture_output=True, cwd=str(REPO_ROOT), env=script_env, timeout=180)
    stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert result.returncode == 0, stderr
    # the bad lines are skipped: the conversation goes on with the round before them
    assert stdout == f"{first}\n{second}\n{fresh}\n"
    assert "\x1b" not in stdout  # no screen control codes when piped
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, stderr
    assert errors[0] == "error: line 3 is not valid UTF-8 (byte 1); skipped"
    assert errors[1].startswith("error: line 4: ") and f"max_length={MAX_LENGTH}" in errors[1]


@pytest.mark.slow
def test_missing_model_is_one_clear_line(tmp_path, script_env):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "cli_demo.py"), "--model", str(tmp_path / "nowhere")],
        input="", capture_output=True, text=True, cwd=str(REPO_ROOT), env=script_env, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "--model" in lines[-1]


def test_help_lists_the_shared_flags():
    import cli_demo

    text = cli_demo.build_parser().format_help()
    for flag in ("--model", "--device", "--quantize", "--num-gpus", "--dtype", "--max-length", "--top-p",
                 "--temperature"):
        assert flag in text
