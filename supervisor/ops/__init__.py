"""Operations: what a result leaves behind (``record``, ``history``, ``metrics``, ``logs``, ``redact``) and how people reach it (``site``, ``control``, ``controltoken``)."""
