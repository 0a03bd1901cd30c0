"""Example tasks: ``topk`` (with a buggy candidate), ``matmul`` (numeric) and ``sorting_cmd``
(a command task speaking JSON lines)."""
