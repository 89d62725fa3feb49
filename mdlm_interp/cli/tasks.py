"""``mdlm-interp tasks list|show|export|words``: the few-shot rule-induction task suite."""

import argparse

MAX_EXPORT = 1_000_000  # prompts per export: they are all sampled before the file is written


def add_parser(subparsers) -> None:
    """Register ``tasks list``, ``tasks show``, ``tasks export`` and ``tasks words``."""
    from mdlm_interp.tasks.format import DEFAULT_FILLER  # light: no third-party import

    parser = subparsers.add_parser("tasks", help="list, show and export the few-shot rule-induction tasks",
                                   description="The 16 few-shot rule-induction tasks (docs/tasks.md).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="print the 16 tasks, one line each with its description")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", help="print one prompt with its spans labelled",
                              description="Print one sampled prompt as text, with a [label] line before each "
                              "example, the query, the answer slot and the masks after it (<mask>).")
    show.add_argument("task", help="task name, e.g. adjective+largest (see `tasks list`)")
    _add_sampling_flags(show)
    show.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the prompt (default 0)")
    show.add_argument("--masks", type=int, default=1, metavar="N",
                      help="tokens at the answer slot, the first being the answer (default 1; 0 or 1 with --causal)")
    show.add_argument("--filler", nargs="?", const=DEFAULT_FILLER, default=None, metavar="STR",
                      help="filler control: each of the n - 1 masks after the answer slot becomes this "
                      f"one-token text ({DEFAULT_FILLER!r} when STR is omitted)")
    show.add_argument("--causal", action="store_true",
                      help="render for a causal model: no masks, the answer is the next token")
    show.add_argument("--chat-template", default=None, metavar="STR",
                      help="wrap the user text in this template containing {content}; the answer slot follows it")
    show.set_defaults(func=run_show)

    export = actions.add_parser("export", help="write sampled prompts, or fine-tuning pairs, as JSON lines",
                                description="Write N prompts per task as JSON lines (keys in docs/tasks.md); "
                                "the same arguments give a byte-identical file. --format sft writes fine-tuning "
                                "pairs for `mdlm-interp train-ma` instead: prompt (up to the answer slot) and "
                                "response (the answer), sampled with negative seeds that no evaluation uses, "
                                "for the tasks of half of the relevant categories only (--categories), so "
                                "evaluations can report held-in and held-out categories.")
    export.add_argument("--task", required=True, metavar="TASK|all", help="a task name, or all for the 16 tasks "
                        "(with --format sft: those of --categories)")
    export.add_argument("--n", type=int, required=True, metavar="N", help="number of prompts per task")
    export.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the export (default 0)")
    export.add_argument("--out", required=True, metavar="FILE.jsonl", help="output file, or - for stdout")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (it is replaced only once the new one is complete)")
    export.add_argument("--format", choices=("prompts", "sft"), default="prompts",
                        help="prompts: one record describing each prompt (default); sft: fine-tuning pairs")
    export.add_argument("--categories", default=None, metavar="C1,C2,...",
                        help="with --format sft: the relevant categories the pairs cover (default "
                        "adjective,animal,profession,place, every other one; the rest are held out)")
    _add_sampling_flags(export)
    export.set_defaults(func=run_export)

    words = actions.add_parser("words", help="print the word count of each category",
                               description="Print how many words each category has, and with --tokenizer how "
                               "many of them are a single token (with their leading space).")
    words.add_argument("--tokenizer", default=None, metavar="PATH",
                       help="tokenizer.json, or a directory holding one")
    words.set_defaults(func=run_words)


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-relevant", type=int, default=10, metavar="N",
                        help="number of relevant examples (default 10)")
    parser.add_argument("--n-distractor", type=int, default=40, metavar="N",
                        help="number of distractor examples (default 40)")
    parser.add_argument("--placement", default="random", metavar="P",
                        help="random (default), relevant-at:K (relevant block from example slot K), "
                        "query-at:K (query after K examples), or relevant-at:K,query-at:J")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="draw only words that are one token for this tokenizer (tokenizer.json or its directory)")


def run_list(args) -> int:
    """Handle ``tasks list``: one line per task, name then description."""
    from mdlm_interp.tasks import TASK_NAMES, get_task

    width = max(len(name) for name in TASK_NAMES)
    for name in TASK_NAMES:
        print(f"{name:<{width}}  {get_task(name).description}")
    return 0


def run_show(args) -> int:
    """Handle ``tasks show``."""
    from mdlm_interp.tasks import AnswerSlot, PromptConfig, render_prompt, sample_prompt

    config = PromptConfig(args.task, args.n_relevant, args.n_distractor, args.placement)
    slot = AnswerSlot(args.masks, args.causal, args.filler)
    prompt = sample_prompt(config, args.seed, _tokenizer_words(args.tokenizer))
    text = render_prompt(prompt, slot, args.chat_template)
    print(f"# {config.task}: {prompt.task.description}")
    print(f"# placement {config.placement}, {config.n_relevant} relevant + {config.n_distractor} distractor "
          f"examples, seed {args.seed}; relevant slots {prompt.relevant_slots}")
    print(text, end="")
    return 0


def run_export(args) -> int:
    """Handle ``tasks export``."""
    import sys

    from mdlm_interp.errors import UsageError
    from mdlm_interp.outputs import check_output_file, staged_file
    from mdlm_interp.tasks import SFT_CATEGORIES, TASK_NAMES, export_records, get_task, sft_records, sft_tasks, write_jsonl

    tasks = TASK_NAMES if args.task == "all" else [get_task(args.task).name]
    if args.n * len(tasks) > MAX_EXPORT:
        raise UsageError(f"{args.n * len(tasks):,} prompts asked, more than {MAX_EXPORT:,} per export")
    if args.out != "-":
        check_output_file(args.out, overwrite=args.overwrite)
    if args.format == "sft":
        categories = SFT_CATEGORIES if args.categories is None else tuple(c for c in args.categories.split(",") if c)
        tasks = sft_tasks(tasks, categories)
        make = sft_records
    elif args.categories is not None:
        raise UsageError("--categories goes with --format sft")
    else:
        make = export_records
    # sample everything first: a bad argument leaves no partial output
    records = list(make(tasks, args.n, args.seed, args.n_relevant, args.n_distractor, args.placement,
                        _tokenizer_words(args.tokenizer)))
    if args.out == "-":
        write_jsonl(records, sys.stdout)
        return 0
    with staged_file(args.out) as out:
        count = write_jsonl(records, out)
    print(f"wrote {count} {'fine-tuning pairs' if args.format == 'sft' else 'prompts'} to {args.out}", file=sys.stderr)
    return 0


def run_words(args) -> int:
    """Handle ``tasks words``: per category, the word count (and single-token survivors)."""
    from mdlm_interp.tasks import word_lists

    lists = word_lists()
    kept = _tokenizer_words(args.tokenizer)
    for category, count in lists.counts().items():
        survivors = "" if kept is None else f"  {kept.counts()[category]} single tokens"
        print(f"{category:<12} {count} words{survivors}")
    return 0


def _tokenizer_words(path):
    """Return the word lists restricted to single tokens of the tokenizer at ``path`` (None: no path).

    No minimum is imposed here: ``sample_prompt`` names a category that is too small for the task.
    """
    if path is None:
        return None
    from pathlib import Path

    from tokenizers import Tokenizer

    from mdlm_interp.errors import UsageError
    from mdlm_interp.tasks import single_token_words

    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no tokenizer.json there")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as error:  # a corrupt file: one line naming it
        raise UsageError(f"{file}: cannot read the tokenizer: {str(error).splitlines()[0]}") from error
    return single_token_words(tokenizer, min_per_category=0)
