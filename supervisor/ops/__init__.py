"""Operations: what a result leaves behind (``record``, ``history``, ``metrics``, ``logs``, ``redact``,
``notify``) and how people reach it (``site``, ``control``, ``page``, ``controltoken``)."""
