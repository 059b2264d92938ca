"""Webhook intake: bytes in, a verdict out, at once (``intake``); is it genuine and for us (``delivery``, ``push``)."""
