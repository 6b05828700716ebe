"""The Redis stores: usage counters and quota decisions (``counters``, ``decisions``), the
pipelined connection the decisions use, and their Lua scripts (``lua/``)."""
