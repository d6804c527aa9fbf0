"""ServerSettings: every limit and option of the HTTP server, with its default; api.py's flags set them."""

from collections.abc import Sequence as Seq
from dataclasses import dataclass

from .engine import DEFAULT_PREFILL_CHUNK_TOKENS


@dataclass
class ServerSettings:
    api_key: str | None = None  # when set, every route but /health needs "Authorization: Bearer <key>"
    cors_origins: Seq[str] = ()  # origins allowed to call from a browser; none: CORS stays off
    log_content: bool = False  # log prompts and answers (off: only sizes and timings)
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_prompt_tokens: int | None = None  # after leaving out old rounds; None: the model's context
    max_answer_tokens: int | None = None  # longest answer, whatever a request asks; None: what the request leaves
    max_batch_size: int = 32  # sequences decoded together
    max_queue: int = 256  # sequences waiting to join; more get 503
    threads: int | None = None  # CPU threads of the engine (None: torch's setting)
    # prompt tokens' worth of prefill work between two decoding steps: how long a joining prompt may pause the
    # running answers
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS
    # connections (chatglm.serving.server)
    request_timeout: float = 10.0  # seconds for a request's headers, and again for its body; then 408/closed
    max_connections: int = 512  # open connections; a request on one more gets 503
    keep_alive_timeout: float = 5.0  # seconds an idle connection stays open between requests
    drain_seconds: float = 30.0  # on SIGTERM/SIGINT: how long running answers may go on before they are cut
