"""Checks on the text people send, shared by every front door."""


def is_valid_text(text: str) -> bool:
    """False for text holding lone UTF-16 surrogates: undecodable bytes read from a terminal, or JSON escapes
    like \\ud800, which are not characters and cannot be encoded, tokenized or logged."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
