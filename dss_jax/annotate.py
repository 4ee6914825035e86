r"""Annotates examples with a teacher LLM's chain-of-thought and writes a teacher cache.

    python -m dss_jax.annotate \
      --input=unlabeled.jsonl --output=cache.jsonl --dataset_family=svamp \
      --base_url=http://localhost:8000/v1 --model=meta-llama/Llama-3.1-70B-Instruct \
      --num_samples=5 --temperature=0.7 --vote --keep=parsed --concurrency=32

Any OpenAI-compatible server works (vLLM, TGI, llama.cpp, hosted APIs); the API key is
read from the variable named by --api_key_env (or --api_key_file), never logged or
written, and sent over plain http only to this machine (else --allow_key_over_http).
A trained dss_jax student can be the teacher too (`--backend=student --checkpoint=MODEL_DIR`:
its `explain:` rationale and `predict:` label, no prompt), and a registered task's split can
be the input instead of a file (`--task=dss_synthetic --split=unlabeled`, with the
task's gin file), which is how bootstrapped self-training annotates (docs/bootstrap.md):

    python -m dss_jax.annotate --backend=student --checkpoint=/runs/round1 \
      --task=dss_synthetic --split=unlabeled --gin_file=recipes/bootstrap_data.gin \
      --output=student_cache.jsonl

Rerunning the same command resumes: finished examples are skipped, failed ones retried.
--output may be a gs:// URL: the cache is then written through a local working copy and
uploaded whole every --cache_upload_seconds, on Ctrl-C and at the end; a run killed in
between leaves its newer records in the working copy, which the next run on the same
machine adds to the cache before it asks for anything (dss_jax/data/cache.py).
See docs/annotate.md. Before any request, --output and --summary_json are checked
(dss_jax/output_paths.py): neither may be the input, the prompt, the other one, or a file
of a run or a checkpoint; an existing --summary_json is replaced only with --overwrite
(the cache in --output is never replaced: a rerun continues it).

Exit status: 0 when every input example is in the cache; 1 when some examples failed
after all retries (rerun to retry them); 2 for a usage or input error; 3 when the
server refused the configuration (bad key, model or URL); 130 when interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys

from absl import flags, logging

from dss_jax import cli, files, gin_utils, output_paths, settings
from dss_jax.data.cache import CacheWriter
from dss_jax.teacher.credentials import header_problem, parse_base_url
from dss_jax.teacher.examples import InputError, read_examples
from dss_jax.teacher.http_backend import APIS, HttpBackendConfig, OpenAIHttpBackend
from dss_jax.teacher.pipeline import AnnotateConfig, run_annotation
from dss_jax.teacher.prompts import PromptError, resolve_template
from dss_jax.teacher.selection import KEEP_CHOICES

FLAGS = flags.FLAGS
gin_utils.define_gin_flags()

flags.DEFINE_string("input", None, 'JSONL of examples: {"id", "input", optional "label", ...} per line.')
flags.DEFINE_string("task", None, "Instead of --input: a registered task (its module imported by a --gin_file).")
flags.DEFINE_string("split", None, "With --task: the split to annotate (e.g. unlabeled, train).")
flags.DEFINE_string(
    "task_input_field", "inputs", "With --task, for a task not built from teacher caches: the input feature."
)
flags.DEFINE_string(
    "task_label_field", None, "With --task, for a task not built from teacher caches: the gold label feature."
)
flags.DEFINE_string("output", None, "Teacher cache (JSONL) to append to; created if missing.")
flags.DEFINE_string(
    "dataset_family",
    None,
    "Output parser family: svamp, cqa, anli1 (alias nli), esnli. Default with --task: the task's.",
)
flags.DEFINE_enum(
    "backend",
    "http",
    ["http", "student"],
    "http: an OpenAI-compatible server; student: a trained dss_jax checkpoint (--checkpoint).",
)
flags.DEFINE_string("base_url", "http://localhost:8000/v1", "Server URL up to and including /v1.")
flags.DEFINE_string(
    "model",
    None,
    "Model name sent to the server; also recorded as each sample's teacher (student: default 'student:<checkpoint>').",
)
flags.DEFINE_string(
    "checkpoint", None, "Student: a checkpoint dir, or a training run's MODEL_DIR (its latest checkpoint)."
)
flags.DEFINE_enum(
    "student_target",
    None,
    ["two_task", "single_task"],
    "Student: two_task (explain: -> rationale, predict: -> label) or single_task (a student trained "
    "with task_options.label_target='rationale_then_label'). Default: what the checkpoint's run was "
    "trained with (its task.json), else two_task; a contradicting value is an error.",
)
flags.DEFINE_integer("student_batch_size", 32, "Student: rows (prompts x samples) per decode batch.")
flags.DEFINE_integer("student_input_length", 512, "Student: encoder tokens; longer inputs are cut with a warning.")
flags.DEFINE_integer(
    "student_label_length", 64, "Student: tokens of a decoded label (the rationale gets --max_tokens)."
)
flags.DEFINE_float("student_batch_wait", 0.005, "Student: seconds to wait for more prompts to fill a batch.")
flags.DEFINE_string(
    "api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key (unset or --api_key_env=: no key sent)."
)
flags.DEFINE_string(
    "api_key_file", None, "Instead of --api_key_env: a file holding the API key (its final line end is dropped)."
)
flags.DEFINE_bool(
    "allow_key_over_http",
    False,
    "Send the API key (or --base_url's credentials) over plain http:// to another machine, "
    "readable on the way; only on a network you trust. http:// to this machine needs no flag.",
)
flags.DEFINE_enum("api", "chat", list(APIS), "chat: /chat/completions (instruct models); completions: /completions.")
flags.DEFINE_string(
    "prompt",
    None,
    "Prompt template: a file, a built-in name (e.g. svamp_cot, cqa_zeroshot), or cot/zeroshot for the "
    "family's built-in few-shot or zero-shot prompt. Default: the family's few-shot prompt.",
)
flags.DEFINE_integer("num_samples", 1, "Completions per example (self-consistency when > 1).")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature.")
flags.DEFINE_integer("max_tokens", 256, "Maximum completion length in tokens (student: of the rationale).")
flags.DEFINE_multi_string("stop", None, "Stop sequence (repeatable; \\n and \\t are unescaped). Default: the prompt's.")
flags.DEFINE_integer("seed", None, "Sampling seed, for servers that support one (student: default 0).")
flags.DEFINE_integer("samples_per_request", 0, "Max completions per request (n); 0: all at once.")
flags.DEFINE_integer("concurrency", 8, "Requests in flight at once (student default: enough to fill a batch).")
flags.DEFINE_float("rate_limit", 0.0, "Max requests per second over all workers, retries included; 0: no limit.")
flags.DEFINE_float(
    "timeout",
    120.0,
    "Seconds one request may take in all (connect, send, the whole reply) "
    "before it is cut off and retried; a server that trickles bytes cannot hold a worker longer.",
)
flags.DEFINE_integer(
    "max_reply_bytes",
    8 << 20,
    "A reply body larger than this fails its example (not retried; "
    "a rerun tries again), so a runaway server cannot fill memory or the cache.",
)
flags.DEFINE_integer("max_retries", 6, "Retries per request after the first attempt (429, 5xx, connection, bad JSON).")
flags.DEFINE_float("initial_backoff", 1.0, "Seconds; the cap of the jittered retry wait, doubled per retry.")
flags.DEFINE_float("max_backoff", 60.0, "Seconds; the largest retry wait (a server's Retry-After may exceed it).")
flags.DEFINE_enum(
    "keep",
    "all",
    list(KEEP_CHOICES),
    "Samples to write: all, parsed, or correct (label matches the gold label when known).",
)
flags.DEFINE_bool("vote", False, "Majority vote over parsed labels; keep only the winning label's samples.")
flags.DEFINE_float(
    "min_vote_share",
    0.0,
    "With --vote: keep no sample of an example whose winning label has less than this share of the parsed "
    "samples (e.g. 1.0: unanimous only). The record is still written, with the vote in meta, so a rerun skips it.",
)
flags.DEFINE_float(
    "cache_upload_seconds",
    10.0,
    "With an object-store --output (gs://...): seconds between uploads of the cache while records come in "
    "(each upload sends the whole file, as an object cannot be appended to); it is also uploaded at the end, "
    "on Ctrl-C and on a fatal error, and a killed run's newer records are kept in a local working copy "
    "that the next run on this machine uploads.",
)
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
flags.DEFINE_string("summary_json", None, "Also write the final summary as JSON to this file.")
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace an existing --summary_json file. The cache in --output is never replaced: a rerun continues it.",
)

EXIT_FAILED, EXIT_USAGE, EXIT_FATAL, EXIT_INTERRUPTED = 1, 2, 3, 130

# Every numeric flag and the values it may take, checked before anything is read or sent:
# absl parses `--temperature=nan` and `--max_tokens=0` as numbers like any other.
NUMERIC_FLAGS: dict[str, settings.Rule] = {
    "num_samples": settings.positive_int,
    "temperature": settings.number(0),
    "max_tokens": settings.positive_int,
    "seed": settings.optional(settings.integer),
    "samples_per_request": settings.nonnegative_int,  # 0: all at once
    "concurrency": settings.positive_int,
    "rate_limit": settings.number(0),  # 0: no limit
    "timeout": settings.number(0, open_low=True),
    "max_reply_bytes": settings.positive_int,
    "max_retries": settings.nonnegative_int,
    "initial_backoff": settings.number(0, open_low=True),
    "max_backoff": settings.number(0, open_low=True),
    "min_vote_share": settings.number(0, 1),
    "student_batch_size": settings.positive_int,
    "student_input_length": settings.positive_int,
    "student_label_length": settings.positive_int,
    "student_batch_wait": settings.number(0),
    "cache_upload_seconds": settings.number(0),
}


def check_numeric_flags() -> None:
    """A usage error naming the first numeric flag whose value it cannot take."""
    for name, rule in NUMERIC_FLAGS.items():
        value = FLAGS[name].value
        problem = rule(value)
        if problem:
            _usage_error(f"--{name} {problem}, got {value!r}")


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


def _usage_error(message: str) -> None:
    print(f"annotate: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _parse_gin() -> None:
    """--gin_file / --gin_bindings: imports task modules and binds their settings."""
    if not FLAGS.gin_file and not FLAGS.gin_bindings:
        return
    # A bad file, name or macro raises gin_utils.GinConfigError, which cli.run reports;
    # bindings without a file are checked too (a misspelt macro, an unquoted string).
    try:
        gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths, require_files=False)
    except (ValueError, ImportError) as e:
        _usage_error(f"gin configuration error: {e}")


def _import_builtin_tasks() -> None:
    """The repository's task modules, so that --task=dss_synthetic works without a gin file."""
    import importlib

    for module in ("tasks.dss", "tasks.synthetic", "tasks.bootstrap"):
        try:
            importlib.import_module(module)
        except ImportError as e:  # e.g. the package installed without tasks/
            logging.info("built-in task module %s not imported: %s", module, e)


def _read_examples(template):
    if FLAGS.input:
        return read_examples(FLAGS.input, template)
    from dss_jax.teacher.task_input import read_task_examples

    return read_task_examples(
        FLAGS.task,
        FLAGS.split,
        input_field=FLAGS.task_input_field,
        label_field=FLAGS.task_label_field,
        template=template,
    )


def _family() -> str:
    if FLAGS.dataset_family:
        return FLAGS.dataset_family
    if FLAGS.task:
        from dss_jax.data import tasks as dss_tasks

        if FLAGS.task in dss_tasks.REGISTERED:
            return dss_tasks.task_family(FLAGS.task)
    _usage_error(
        "--dataset_family is required" + (f" (task {FLAGS.task!r} does not say its family)" if FLAGS.task else "")
    )


def _student_backend(family: str, rows: int):
    """The student backend; its decode batches no larger than the `rows` (examples x
    samples) this run can decode: a batch is padded to its size whatever fills it."""
    from dss_jax.teacher.student_backend import StudentBackend, StudentConfig, StudentLoadError

    batch_size = FLAGS.student_batch_size
    if batch_size > rows:
        logging.info(
            "--student_batch_size=%d is more than the %d rows (examples x samples) to decode: batches of %d",
            batch_size,
            rows,
            rows,
        )
        batch_size = rows
    try:
        config = StudentConfig(
            checkpoint=FLAGS.checkpoint,
            family=family,
            target=_student_target(),
            batch_size=batch_size,
            input_length=FLAGS.student_input_length,
            label_length=FLAGS.student_label_length,
            seed=FLAGS.seed or 0,
            batch_wait=FLAGS.student_batch_wait,
        )
        return StudentBackend(config)
    except (StudentLoadError, ValueError) as e:
        _usage_error(str(e))


def _student_target() -> str:
    """--student_target, or what the checkpoint's run was trained with; a contradiction is an error."""
    from dss_jax import checkpoints

    run = checkpoints.run_task(FLAGS.checkpoint) if FLAGS.checkpoint else None
    label_target = run[2].get("label_target") if run else None
    trained = (
        None if label_target is None else ("single_task" if label_target == "rationale_then_label" else "two_task")
    )
    if FLAGS.student_target and trained and FLAGS.student_target != trained:
        _usage_error(
            f"--student_target={FLAGS.student_target} but {FLAGS.checkpoint} was trained as {trained} "
            f"(task_options.label_target={label_target!r} in {run[0]}): drop the flag"
        )
    return FLAGS.student_target or trained or "two_task"


def _api_key() -> tuple[str | None, str]:
    """The key and where it came from; refused in one line (never quoting it) if it cannot be sent."""
    if FLAGS.api_key_file:
        if FLAGS["api_key_env"].present:
            _usage_error("give one of --api_key_env and --api_key_file")
        source = f"--api_key_file={FLAGS.api_key_file}"
        try:
            raw = files.path(FLAGS.api_key_file).read_bytes()
        except OSError as e:
            _usage_error(f"{source}: {e.strerror or e}")
        try:
            # What an editor leaves: a final line end (CRLF on Windows) and a UTF-8 BOM.
            key = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
        except UnicodeDecodeError:
            _usage_error(f"{source} is not UTF-8 text: save the key as plain text")
        if not key:
            _usage_error(f"{source} is empty: put the API key in it")
        problem = header_problem(key)
        if problem:
            _usage_error(
                f"{source} holds {problem} of the key, which cannot go in an HTTP header: "
                "the file should hold the key alone, on one line"
            )
        return key, source
    if not FLAGS.api_key_env:
        return None, "no key"
    source = f"${FLAGS.api_key_env}"
    key = os.environ.get(FLAGS.api_key_env) or None
    if key is None:
        logging.info("%s is not set; sending no API key", source)
        return None, source
    problem = header_problem(key)
    if problem:
        hint = ""
        if "carriage return" in problem or "line break" in problem:
            hint = " (read from a file? --api_key_file=FILE reads it and drops its final line end)"
        _usage_error(
            f"{source} (--api_key_env) holds {problem}, which cannot go in an HTTP header: "
            f"set it to the key alone{hint}"
        )
    return key, source


def _http_backend() -> OpenAIHttpBackend:
    api_key, source = _api_key()
    try:
        return OpenAIHttpBackend(
            HttpBackendConfig(
                base_url=FLAGS.base_url,
                model=FLAGS.model,
                api=FLAGS.api,
                api_key=api_key,
                api_key_source=source,
                allow_key_over_http=FLAGS.allow_key_over_http,
                timeout=FLAGS.timeout,
                max_reply_bytes=FLAGS.max_reply_bytes,
                max_retries=FLAGS.max_retries,
                initial_backoff=FLAGS.initial_backoff,
                max_backoff=FLAGS.max_backoff,
                rate_limit=FLAGS.rate_limit or None,
                samples_per_request=FLAGS.samples_per_request or None,
                seed=FLAGS.seed,
            )
        )
    except ValueError as e:
        _usage_error(str(e))


def _concurrency(student_batch_size: int | None) -> int:
    if student_batch_size and not FLAGS["concurrency"].present:
        # Prompts in flight x samples each should fill a decode batch.
        return max(FLAGS.concurrency, -(-student_batch_size // max(FLAGS.num_samples, 1)))
    return FLAGS.concurrency


def _check_outputs() -> None:
    """The refusals of output_paths for --output and --summary_json."""
    prompt = FLAGS.prompt if FLAGS.prompt and files.path(FLAGS.prompt).exists() else None
    outputs = [output_paths.Output("--output", FLAGS.output, appends=True)]
    if FLAGS.summary_json:
        outputs.append(output_paths.Output("--summary_json", FLAGS.summary_json))
    output_paths.check_outputs(
        outputs,
        inputs={"--input": FLAGS.input, "--prompt": prompt, "--checkpoint": FLAGS.checkpoint},
        overwrite=FLAGS.overwrite,
        overwrite_setting="--overwrite",
    )


def main(argv):
    if len(argv) > 1:
        _usage_error(f"unexpected arguments {argv[1:]}; every option is a --flag")
    check_numeric_flags()
    student = FLAGS.backend == "student"
    if bool(FLAGS.input) == bool(FLAGS.task):
        _usage_error("give exactly one of --input=FILE.jsonl and --task=NAME --split=SPLIT")
    if FLAGS.task and not FLAGS.split:
        _usage_error("--task needs --split (e.g. --split=unlabeled)")
    if FLAGS.split and not FLAGS.task:
        _usage_error("--split goes with --task")
    if not FLAGS.output:
        _usage_error("--output is required")
    if student:
        if not FLAGS.checkpoint:
            _usage_error("--backend=student needs --checkpoint (a checkpoint dir or a training run's MODEL_DIR)")
        if FLAGS.prompt or FLAGS.stop:
            _usage_error("--backend=student takes no --prompt or --stop: the student reads the raw input")
    elif not FLAGS.model:
        _usage_error("--model is required")
    if FLAGS.task:
        _import_builtin_tasks()
    _parse_gin()

    from dss_jax.data import parsers

    family = _family()
    try:
        parsers.parse_completion(family, "")
    except ValueError as e:
        _usage_error(f"--dataset_family: {e}")

    _check_outputs()  # before any request or checkpoint read, not when the results are in
    try:
        if student:
            from dss_jax.teacher.student_backend import STUDENT_TEMPLATE as template
        else:
            template = resolve_template(FLAGS.prompt, family)
        examples = _read_examples(template)
    except (PromptError, InputError) as e:
        _usage_error(str(e))
    source = FLAGS.input or f"{FLAGS.task}/{FLAGS.split}"

    if student:
        cli.use_compilation_cache()
        backend = _student_backend(family, rows=max(1, len(examples) * FLAGS.num_samples))
        backend.check_inputs(examples)  # warns per example that will be cut
    else:
        backend = _http_backend()
    try:
        config = AnnotateConfig(
            template=template,
            teacher=(FLAGS.model or backend.name) if student else FLAGS.model,
            num_samples=FLAGS.num_samples,
            temperature=FLAGS.temperature,
            max_tokens=FLAGS.max_tokens,
            stop=tuple(_unescape(s) for s in FLAGS.stop) if FLAGS.stop else None,
            concurrency=_concurrency(backend.config.batch_size if student else None),
            keep=FLAGS.keep,
            vote=FLAGS.vote,
            min_vote_share=FLAGS.min_vote_share,
            progress=FLAGS.progress,
        )
    except ValueError as e:
        _usage_error(str(e))
    if config.num_samples > 1 and config.temperature == 0:
        logging.warning("--num_samples=%d at --temperature=0 asks for identical samples", config.num_samples)
    if student:
        logging.info(
            "annotating %d examples from %s with the student %s, %d sample(s) each",
            len(examples),
            source,
            backend.checkpoint_path,
            config.num_samples,
        )
    else:
        logging.info(
            "annotating %d examples from %s with %s at %s (%s API), prompt %s, %d sample(s) each",
            len(examples),
            source,
            FLAGS.model,
            parse_base_url(FLAGS.base_url).display,  # credentials masked
            FLAGS.api,
            template.id,
            config.num_samples,
        )

    try:
        writer = CacheWriter(FLAGS.output, upload_seconds=FLAGS.cache_upload_seconds)
    except (RuntimeError, ValueError) as e:  # locked by another run, or a corrupt cache
        _usage_error(str(e))
    try:
        with writer:
            summary = run_annotation(
                examples,
                backend,
                writer,
                config,
                parse=functools.partial(parsers.parse_completion, family),
                labels_match=functools.partial(parsers.labels_match, family),
            )
    finally:
        if student:
            backend.close()
    print(summary.format(), file=sys.stderr)
    if FLAGS.summary_json:
        files.atomic_write(FLAGS.summary_json, json.dumps(summary.to_json(), indent=2))
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if summary.fatal_error:
        sys.exit(EXIT_FATAL)
    if summary.failed or not summary.complete:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    cli.run(main, "annotate")
