"""The teacher side: prompt a large model for chain-of-thought, parse, vote, cache.

  prompts.py       prompt templates (`{{field}}` placeholders, `##` header); built-ins in prompts/
  examples.py      reading the JSONL of examples to annotate
  task_input.py    or a registered task's split
  backend.py       the `TeacherBackend` protocol every teacher implements
  http_backend.py  any OpenAI-compatible server over HTTP (retries, rate limit, usage)
  student_backend.py  a trained dss_jax student (batched local decoding), for self-training
  selection.py     self-consistency voting and the keep filters
  pipeline.py      the concurrent, resumable annotation loop and its summary
  fake_server.py   a scripted OpenAI-compatible server for tests and benchmarks
The binary is `python -m dss_jax.annotate`.
"""
