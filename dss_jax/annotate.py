r"""Annotates examples with a teacher LLM's chain-of-thought and writes a teacher cache.

    python -m dss_jax.annotate \
      --input=unlabeled.jsonl --output=cache.jsonl --dataset_family=svamp \
      --base_url=http://localhost:8000/v1 --model=meta-llama/Llama-3.1-70B-Instruct \
      --num_samples=5 --temperature=0.7 --vote --keep=parsed --concurrency=32

Any OpenAI-compatible server works (vLLM, TGI, llama.cpp, hosted APIs); the API key is
read from the variable named by --api_key_env and never logged or written. Rerunning
the same command resumes: finished examples are skipped, failed ones retried. See
docs/annotate.md.

Exit status: 0 when every input example is in the cache; 1 when some examples failed
after all retries (rerun to retry them); 2 for a usage or input error; 3 when the
server refused the configuration (bad key, model or URL); 130 when interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys

from absl import app, flags, logging

from dss_jax.data.cache import CacheWriter
from dss_jax.teacher.examples import InputError, read_examples
from dss_jax.teacher.http_backend import APIS, HttpBackendConfig, OpenAIHttpBackend
from dss_jax.teacher.pipeline import AnnotateConfig, run_annotation
from dss_jax.teacher.prompts import PromptError, resolve_template
from dss_jax.teacher.selection import KEEP_CHOICES

FLAGS = flags.FLAGS

flags.DEFINE_string("input", None, "JSONL of examples: {\"id\", \"input\", optional \"label\", ...} per line.")
flags.DEFINE_string("output", None, "Teacher cache (JSONL) to append to; created if missing.")
flags.DEFINE_string("dataset_family", None, "Output parser family: svamp, cqa, anli1 (alias nli), esnli.")
flags.DEFINE_string("base_url", "http://localhost:8000/v1", "Server URL up to and including /v1.")
flags.DEFINE_string("model", None, "Model name sent to the server; also recorded as each sample's teacher.")
flags.DEFINE_string("api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key (unset: no key sent).")
flags.DEFINE_enum("api", "chat", list(APIS), "chat: /chat/completions (instruct models); completions: /completions.")
flags.DEFINE_string(
    "prompt", None,
    "Prompt template: a file, a built-in name (e.g. svamp_cot, cqa_zeroshot), or cot/zeroshot for the "
    "family's built-in few-shot or zero-shot prompt. Default: the family's few-shot prompt.",
)
flags.DEFINE_integer("num_samples", 1, "Completions per example (self-consistency when > 1).")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature.")
flags.DEFINE_integer("max_tokens", 256, "Maximum completion length in tokens.")
flags.DEFINE_multi_string("stop", None, "Stop sequence (repeatable; \\n and \\t are unescaped). Default: the prompt's.")
flags.DEFINE_integer("seed", None, "Sampling seed, for servers that support one.")
flags.DEFINE_integer("samples_per_request", 0, "Max completions per request (n); 0: all at once.")
flags.DEFINE_integer("concurrency", 8, "Requests in flight at once.")
flags.DEFINE_float("rate_limit", 0.0, "Max requests per second over all workers, retries included; 0: no limit.")
flags.DEFINE_float("timeout", 120.0, "Seconds a connect or read may wait without progress before a retry.")
flags.DEFINE_integer("max_retries", 6, "Retries per request after the first attempt (429, 5xx, connection, bad JSON).")
flags.DEFINE_float("initial_backoff", 1.0, "Seconds; the cap of the jittered retry wait, doubled per retry.")
flags.DEFINE_float("max_backoff", 60.0, "Seconds; the largest retry wait (a server's Retry-After may exceed it).")
flags.DEFINE_enum("keep", "all", list(KEEP_CHOICES), "Samples to write: all, parsed, or correct (label matches the gold label when known).")
flags.DEFINE_bool("vote", False, "Majority vote over parsed labels; keep only the winning label's samples.")
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
flags.DEFINE_string("summary_json", None, "Also write the final summary as JSON to this file.")

EXIT_FAILED, EXIT_USAGE, EXIT_FATAL, EXIT_INTERRUPTED = 1, 2, 3, 130


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


def _usage_error(message: str) -> None:
    print(f"annotate: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def main(argv):
    if len(argv) > 1:
        _usage_error(f"unexpected arguments {argv[1:]}; every option is a --flag")
    for name in ("input", "output", "dataset_family", "model"):
        if not getattr(FLAGS, name):
            _usage_error(f"--{name} is required")

    from dss_jax.data import parsers

    family = FLAGS.dataset_family
    try:
        parsers.parse_completion(family, "")
    except ValueError as e:
        _usage_error(f"--dataset_family: {e}")

    try:
        template = resolve_template(FLAGS.prompt, family)
        examples = read_examples(FLAGS.input, template)
    except (PromptError, InputError) as e:
        _usage_error(str(e))

    api_key = os.environ.get(FLAGS.api_key_env) or None
    if api_key is None:
        logging.info("$%s is not set; sending no API key", FLAGS.api_key_env)
    try:
        backend_config = HttpBackendConfig(
            base_url=FLAGS.base_url,
            model=FLAGS.model,
            api=FLAGS.api,
            api_key=api_key,
            timeout=FLAGS.timeout,
            max_retries=FLAGS.max_retries,
            initial_backoff=FLAGS.initial_backoff,
            max_backoff=FLAGS.max_backoff,
            rate_limit=FLAGS.rate_limit or None,
            samples_per_request=FLAGS.samples_per_request or None,
            seed=FLAGS.seed,
        )
        config = AnnotateConfig(
            template=template,
            teacher=FLAGS.model,
            num_samples=FLAGS.num_samples,
            temperature=FLAGS.temperature,
            max_tokens=FLAGS.max_tokens,
            stop=tuple(_unescape(s) for s in FLAGS.stop) if FLAGS.stop else None,
            concurrency=FLAGS.concurrency,
            keep=FLAGS.keep,
            vote=FLAGS.vote,
            progress=FLAGS.progress,
        )
    except ValueError as e:
        _usage_error(str(e))
    if config.num_samples > 1 and config.temperature == 0:
        logging.warning("--num_samples=%d at --temperature=0 asks for identical samples", config.num_samples)
    logging.info(
        "annotating %d examples from %s with %s at %s (%s API), prompt %s, %d sample(s) each",
        len(examples), FLAGS.input, FLAGS.model, FLAGS.base_url, FLAGS.api, template.id, config.num_samples,
    )

    try:
        writer = CacheWriter(FLAGS.output)
    except (RuntimeError, ValueError) as e:  # locked by another run, or a corrupt cache
        _usage_error(str(e))
    with writer:
        summary = run_annotation(
            examples,
            OpenAIHttpBackend(backend_config),
            writer,
            config,
            parse=functools.partial(parsers.parse_completion, family),
            labels_match=functools.partial(parsers.labels_match, family),
        )
    print(summary.format(), file=sys.stderr)
    if FLAGS.summary_json:
        with open(FLAGS.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.to_json(), f, indent=2)
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if summary.fatal_error:
        sys.exit(EXIT_FATAL)
    if summary.failed or not summary.complete:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    app.run(main)
