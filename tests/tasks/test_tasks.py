"""The task suite: word lists, rules, sampling, placements, tokenization and spans, errors."""

import random
import re
from collections import Counter
from pathlib import Path

import pytest
from task_tokenizers import CHAT_TEMPLATE, MASK, byte_bpe, held_out, word_level, wrap

from mdlm_interp.errors import UsageError
from mdlm_interp.paths import data_dir
from mdlm_interp.tasks import (
    CATEGORIES,
    TASK_NAMES,
    PromptConfig,
    export_records,
    get_task,
    load_word_lists,
    sample_prompt,
    single_token_words,
    tokenize_prompt,
    word_lists,
)
from mdlm_interp.tasks.format import example_pieces, query_pieces

EXAMPLE_RE = re.compile(r"Input: (\w+), (\w+), (\w+)\nOutput: (\w+)\n")
QUERY_RE = re.compile(r"Input: (\w+), (\w+), (\w+)\nOutput:$")


@pytest.fixture(scope="module")
def bpe():
    return wrap(byte_bpe())


@pytest.fixture(scope="module")
def wordlevel():
    return wrap(word_level())


def parse(text: str):
    """Return (examples [(inputs, output)], query inputs or None) parsed from prompt text alone."""
    examples = [(m.groups()[:3], m.group(4)) for m in EXAMPLE_RE.finditer(text)]
    query = QUERY_RE.search(text)
    return examples, (query.groups() if query else None)


def decode(tokenizer, ids):
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------- word lists and tasks


def test_word_lists_are_large_disjoint_lowercase_words():
    files = sorted((data_dir() / "words").glob("*.txt"))
    assert {f.stem for f in files} == set(CATEGORIES) | {"digits"}
    assert len(CATEGORIES) >= 8
    owner = {}
    for category in CATEGORIES:
        words = (data_dir() / "words" / f"{category}.txt").read_text().split("\n")
        assert words[-1] == "" and "" not in words[:-1]
        words = words[:-1]
        assert len(words) >= 60, category
        for word in words:
            assert re.fullmatch(r"[a-z]+", word), word
            assert word not in owner, f"{word} in {category} and {owner.get(word)}"
            owner[word] = category
    assert (data_dir() / "words" / "digits.txt").read_text().split() == [str(d) for d in range(10)]
    # words of two categories are left out of both
    for ambiguous in ["orange", "lime", "fly", "duck", "bear", "watch", "cook", "judge", "turkey", "date", "seal"]:
        assert ambiguous not in owner


def test_word_list_loader_rejects_overlap_and_bad_words(tmp_path: Path):
    (tmp_path / "a.txt").write_text("cat\ndog\n")
    (tmp_path / "b.txt").write_text("red\ndog\n")
    with pytest.raises(UsageError, match="'dog' appears also in a.txt"):
        load_word_lists(["a", "b"], tmp_path)
    (tmp_path / "c.txt").write_text("Red\n")
    with pytest.raises(UsageError, match="not one lowercase word"):
        load_word_lists(["c"], tmp_path)
    with pytest.raises(UsageError, match="not found"):
        load_word_lists(["missing"], tmp_path)


def test_sixteen_tasks_and_unknown_task():
    assert len(TASK_NAMES) == 16 == len(set(TASK_NAMES))
    assert {get_task(n).distractor for n in TASK_NAMES} == {"largest", "smallest"}
    assert {get_task(n).category for n in TASK_NAMES} == set(CATEGORIES)
    with pytest.raises(UsageError, match="unknown task 'color\\+largest'"):
        get_task("color+largest")
    with pytest.raises(UsageError, match="unknown task"):
        PromptConfig("adjective+median")


# ---------------------------------------------------------------- sampling and rules


def check_rules(prompt):
    """Assert every rule of the suite on one prompt."""
    lists = word_lists()
    task = prompt.task
    cats = [lists.category_of(w) for w in prompt.query.inputs]
    assert len(set(cats)) == 3 and None not in cats
    assert cats.count(task.category) == 1
    assert prompt.answer == prompt.query.inputs[cats.index(task.category)]
    query_words = set(prompt.query.inputs)
    relevant = [prompt.examples[s] for s in prompt.relevant_slots]
    assert len(relevant) == prompt.config.n_relevant
    assert len(prompt.examples) == prompt.config.n_examples
    for example in relevant:
        ecats = [lists.category_of(w) for w in example.inputs]
        assert len(set(ecats)) == 3 and ecats.count(task.category) == 1
        assert example.output == example.inputs[ecats.index(task.category)]
        assert not query_words & set(example.inputs)
    assert len({e.output for e in relevant} | {prompt.answer}) == len(relevant) + 1
    for example in prompt.examples:
        if not example.relevant:
            values = [int(d) for d in example.inputs]
            assert len(set(values)) == 3 and all(0 <= v <= 9 for v in values)
            rule = max if task.distractor == "largest" else min
            assert example.output == str(rule(values))


def test_every_task_obeys_its_rules():
    for name in TASK_NAMES:
        for seed in range(5):
            check_rules(sample_prompt(PromptConfig(name), seed))


def test_deterministic_from_seed():
    config = PromptConfig("verb+smallest")
    assert sample_prompt(config, 3) == sample_prompt(config, 3)
    assert sample_prompt(config, 3).text_before != sample_prompt(config, 4).text_before
    assert sample_prompt(config, 3).text_before != sample_prompt(PromptConfig("verb+largest"), 3).text_before


def test_export_records_rebuild_from_their_seed():
    for record in export_records(["food+smallest", "verb+largest"], 3, seed=11, placement="query-at:4"):
        config = PromptConfig(record["task"], record["n_relevant"], record["n_distractor"], record["placement"])
        prompt = sample_prompt(config, record["seed"])
        assert (prompt.text_before, prompt.text_after) == (record["prompt"], record["suffix"])
        assert record["seed"] < 2**53


def test_text_matches_the_documented_format():
    prompt = sample_prompt(PromptConfig("animal+largest", n_relevant=3, n_distractor=2), 0)
    examples, query = parse(prompt.text_before)
    assert [(tuple(e.inputs), e.output) for e in prompt.examples] == examples
    assert query == prompt.query.inputs
    assert prompt.text_after == ""
    first = prompt.examples[0]
    assert prompt.text_before.startswith(f"Input: {first.inputs[0]}, {first.inputs[1]}, {first.inputs[2]}\n"
                                         f"Output: {first.output}\nInput: ")


def test_answer_position_in_triple_is_uniform():
    positions = Counter()
    for name in TASK_NAMES:
        for seed in range(60):
            prompt = sample_prompt(PromptConfig(name, n_distractor=0), seed)
            positions[prompt.query.inputs.index(prompt.answer)] += 1
    assert all(abs(count / sum(positions.values()) - 1 / 3) < 0.05 for count in positions.values())


def test_context_is_necessary():
    """Without the examples the rule is a guess (about 1/3); reading them always gives the answer."""
    lists = word_lists()
    records = list(export_records(TASK_NAMES, 100, seed=0, n_relevant=3, n_distractor=5))
    query_only = {  # oracles that see the query words (and know every word's category) but no example
        "first word": lambda q: q[0],
        "last word": lambda q: q[2],
        "alphabetically first category": lambda q: min(q, key=lists.category_of),
        "random": lambda q, rng=random.Random(0): rng.choice(q),
    }
    for name, oracle in query_only.items():
        accuracy = sum(oracle(r["query"]) == r["answer"] for r in records) / len(records)
        assert abs(accuracy - 1 / 3) < 0.05, (name, accuracy)

    def reading_oracle(text):
        examples, query = parse(text)
        wanted = {lists.category_of(output) for _, output in examples if not output.isdigit()}
        assert len(wanted) == 1
        return next(w for w in query if lists.category_of(w) in wanted)

    assert all(reading_oracle(r["prompt"]) == r["answer"] for r in records)


# ---------------------------------------------------------------- placements


@pytest.mark.parametrize("k", [0, 17, 40])
def test_relevant_block_at_slot_k(k):
    prompt = sample_prompt(PromptConfig("food+largest", placement=f"relevant-at:{k}"), 1)
    assert prompt.relevant_slots == list(range(k, k + 10))
    assert prompt.query_slot == 50
    check_rules(prompt)


@pytest.mark.parametrize("k", [0, 23, 50])
def test_query_at_slot_k(k):
    prompt = sample_prompt(PromptConfig("place+smallest", placement=f"query-at:{k}"), 1)
    assert prompt.query_slot == k
    before, _ = parse(prompt.text_before)
    after, _ = parse(prompt.text_after)
    assert len(before) == k and len(after) == 50 - k
    assert prompt.text_before.endswith("".join(query_pieces(prompt.query)))
    assert prompt.text_after == ("" if k == 50 else "\n" + "".join(
        p for e in prompt.examples[k:] for p in example_pieces(e)))


def test_combined_placement_and_pairing():
    random_prompt = sample_prompt(PromptConfig("body+largest"), 5)
    moved = sample_prompt(PromptConfig("body+largest", placement="relevant-at:4,query-at:20"), 5)
    assert moved.relevant_slots == list(range(4, 14)) and moved.query_slot == 20
    # same seed, same examples: only the order changes
    assert Counter(random_prompt.examples) == Counter(moved.examples)
    assert random_prompt.query == moved.query


@pytest.mark.parametrize("placement, message", [
    ("relevant-at:41", "K=41 is out of range"),
    ("query-at:51", "K=51 is out of range"),
    ("relevant-at:-1", "non-negative integer"),
    ("query-at:x", "non-negative integer"),
    ("middle", "unknown placement 'middle'"),
    ("relevant-at:1,relevant-at:2", "unknown placement"),
])
def test_bad_placement(placement, message):
    with pytest.raises(UsageError, match=message):
        PromptConfig("verb+largest", placement=placement)


def test_bad_counts():
    with pytest.raises(UsageError, match="n_relevant=69 is too large for body\\+largest"):
        sample_prompt(PromptConfig("body+largest", n_relevant=69), 0)
    sample_prompt(PromptConfig("body+largest", n_relevant=68, n_distractor=0), 0)
    with pytest.raises(UsageError, match="n_distractor must be a non-negative integer"):
        PromptConfig("body+largest", n_distractor=-1)
    with pytest.raises(UsageError, match="seed must be an integer"):
        sample_prompt(PromptConfig("body+largest"), "1")


# ---------------------------------------------------------------- tokenization


def check_spans(tp, tokenizer, mask_id):
    """Assert that every span decodes to the text it claims."""
    prompt, ids = tp.prompt, tp.input_ids
    assert len(tp.example_spans) == len(prompt.examples)
    for (start, end), example in zip(tp.example_spans, prompt.examples):
        assert decode(tokenizer, ids[start:end]) == "".join(example_pieces(example))
    start, end = tp.spans["query"]
    assert decode(tokenizer, ids[start:end]) == "".join(query_pieces(prompt.query))
    assert decode(tokenizer, [tp.answer_id]) == " " + prompt.answer
    assert tp.spans["answer"] == (tp.answer_position, tp.answer_position + 1)
    if mask_id is not None:
        assert ids[tp.answer_position] == mask_id
    assert tp.relevant_examples == prompt.relevant_slots
    for slot in tp.relevant_examples:
        start, end = tp.example_spans[slot]
        assert tokenizer.convert_ids_to_tokens(ids[end - 2]) == tokenizer.convert_ids_to_tokens(
            tokenizer.encode(" " + prompt.examples[slot].output, add_special_tokens=False)[0])


@pytest.mark.parametrize("which", ["wordlevel", "bpe"])
@pytest.mark.parametrize("placement", ["random", "relevant-at:3", "query-at:7"])
def test_spans_decode_exactly(which, placement, request):
    tokenizer = request.getfixturevalue(which)
    words = single_token_words(tokenizer)
    mask_id = tokenizer.mask_token_id
    for seed in range(3):
        prompt = sample_prompt(PromptConfig("object+smallest", 4, 8, placement), seed, words)
        tp = tokenize_prompt(prompt, tokenizer, mask_token_id=mask_id, masks=3)
        check_spans(tp, tokenizer, mask_id)
        a = tp.answer_position
        assert decode(tokenizer, tp.input_ids[:a]) == prompt.text_before
        assert decode(tokenizer, tp.input_ids[a + 3:]) == prompt.text_after
        if placement == "relevant-at:3":
            assert tp.spans["relevant"] == (tp.example_spans[3][0], tp.example_spans[6][1])
        if placement == "query-at:7":
            assert tp.example_spans[6][1] == tp.spans["query"][0]
            assert tp.spans["masks"] == (a + 1, a + 3)
            assert tp.example_spans[7][0] == a + 3 + 1  # masks, then the line break ending the query


def test_raw_tokenizers_object_is_accepted():
    raw = word_level()
    prompt = sample_prompt(PromptConfig("verb+largest", 2, 3), 0)
    tp = tokenize_prompt(prompt, raw, mask_token_id=raw.token_to_id(MASK))
    assert raw.decode(tp.input_ids[:tp.answer_position]) == prompt.text_before
    assert tp.input_ids[-1] == raw.token_to_id(MASK)


def test_bpe_segments_match_whole_text_tokenization(bpe):
    """Piece-by-piece ids equal the ids of the whole text: the model sees natural tokenization."""
    words = single_token_words(bpe)
    for name in TASK_NAMES[:4]:
        prompt = sample_prompt(PromptConfig(name, 5, 10), 0, words)
        tp = tokenize_prompt(prompt, bpe, mask_token_id=bpe.mask_token_id)
        assert tp.input_ids[:tp.answer_position] == bpe.encode(prompt.text_before, add_special_tokens=False)
        assert tp.answer_id == bpe.encode(prompt.text_before + " " + prompt.answer,
                                          add_special_tokens=False)[tp.answer_position]


@pytest.mark.parametrize("n", [1, 2, 20])
def test_masks_and_filler(wordlevel, n):
    mask_id = wordlevel.mask_token_id
    filler_id = wordlevel.convert_tokens_to_ids(" .")
    prompt = sample_prompt(PromptConfig("animal+smallest", 3, 6), 2, single_token_words(wordlevel))
    base = tokenize_prompt(prompt, wordlevel, mask_token_id=mask_id, masks=1)
    masked = tokenize_prompt(prompt, wordlevel, mask_token_id=mask_id, masks=n)
    filled = tokenize_prompt(prompt, wordlevel, mask_token_id=mask_id, masks=n, filler=" .")
    for tp in (masked, filled):
        assert len(tp.input_ids) == len(base.input_ids) + n - 1
        assert tp.input_ids[:base.answer_position] == base.input_ids[:base.answer_position]
        assert tp.answer_position == base.answer_position and tp.answer_id == base.answer_id
        assert tp.spans["masks"] == (tp.answer_position + 1, tp.answer_position + n)
    assert masked.input_ids.count(mask_id) == n
    assert masked.input_ids[-n:] == [mask_id] * n
    assert filled.input_ids.count(mask_id) == 1
    assert filled.input_ids[-n:] == [mask_id] + [filler_id] * (n - 1)
    assert filled.filler_id == (filler_id if n else None)


def test_causal_answer_is_next_token(bpe):
    prompt = sample_prompt(PromptConfig("profession+largest", 3, 3), 0, single_token_words(bpe))
    for masks in (0, 1):
        tp = tokenize_prompt(prompt, bpe, causal=True, masks=masks)
        assert tp.answer_position == len(tp.input_ids)
        assert decode(bpe, tp.input_ids) == prompt.text_before
        assert bpe.mask_token_id not in tp.input_ids and tp.mask_token_id is None
        assert tp.spans["masks"][0] == tp.spans["masks"][1]


def test_chat_template_and_bos(wordlevel):
    mask_id = wordlevel.mask_token_id
    bos = wordlevel.convert_tokens_to_ids("<|endoftext|>")
    prompt = sample_prompt(PromptConfig("adjective+largest", 2, 2), 0, single_token_words(wordlevel))
    tp = tokenize_prompt(prompt, wordlevel, mask_token_id=mask_id, masks=2, chat_template=CHAT_TEMPLATE,
                         bos_token_id=bos)
    before, after = CHAT_TEMPLATE.split("{content}")
    assert tp.input_ids[0] == bos
    assert decode(wordlevel, tp.input_ids[1:tp.answer_position]) == before + prompt.text_before + after
    assert tp.input_ids[tp.answer_position:] == [mask_id, mask_id]
    check_spans(tp, wordlevel, mask_id)


def test_single_token_filter_counts_and_error(bpe):
    words = single_token_words(bpe)
    lists = word_lists()
    skip = held_out()
    for category in CATEGORIES:
        kept = words[category]
        assert all(len(bpe.encode(" " + w, add_special_tokens=False)) == 1 for w in kept)
        assert set(lists[category]) - skip <= set(kept)  # every word the BPE learned survives
        assert len(kept) < len(lists[category])  # some held-out words are split and dropped
    assert words.counts() == {c: len(words[c]) for c in CATEGORIES}
    with pytest.raises(UsageError, match=r"too few words are single tokens .*need 70 per category.*body \d+ of 69"):
        single_token_words(bpe, min_per_category=70)


def test_tokenize_errors(bpe):
    mask_id = bpe.mask_token_id
    unfiltered = [sample_prompt(PromptConfig("animal+largest", 2, 2), s) for s in range(40)]
    multi = next(p for p in unfiltered if len(bpe.encode(" " + p.answer, add_special_tokens=False)) > 1)
    with pytest.raises(UsageError, match="tokens for this tokenizer; sample prompts with words="):
        tokenize_prompt(multi, bpe, mask_token_id=mask_id)
    prompt = sample_prompt(PromptConfig("animal+largest", 2, 2), 0, single_token_words(bpe))
    moved = sample_prompt(PromptConfig("animal+largest", 2, 2, "query-at:1"), 0, single_token_words(bpe))
    cases = [
        (dict(mask_token_id=mask_id, masks=0), "masks must be at least 1 for a diffusion model"),
        (dict(causal=True, masks=2), "a causal model takes no masks"),
        (dict(), "needs mask_token_id"),
        (dict(mask_token_id=mask_id, masks=2, filler=" ..."), "the filler ' ...' is [2-9] tokens"),
        (dict(mask_token_id=mask_id, chat_template="no slot"), "must contain \\{content\\} exactly once"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message) as error:
            tokenize_prompt(prompt, bpe, **kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="needs a diffusion model"):
        tokenize_prompt(moved, bpe, causal=True)
    with pytest.raises(UsageError, match="chat template"):
        tokenize_prompt(moved, bpe, mask_token_id=mask_id, chat_template=CHAT_TEMPLATE)


@pytest.mark.parametrize("family", ["llada", "dream", "llama"])
def test_with_the_tiny_checkpoints_tokenizers(tiny_model, family):
    """The project's own tokenizers (tiny checkpoints): exact spans, chat template, natural ids."""
    lm = tiny_model(family)
    tokenizer = lm.tokenizer
    words = single_token_words(tokenizer)
    prompt = sample_prompt(PromptConfig("place+largest", 4, 8, "relevant-at:2"), 0, words)
    masks = 1 if lm.spec.causal else 5
    tp = tokenize_prompt(prompt, tokenizer, mask_token_id=lm.mask_token_id, causal=lm.spec.causal,
                         masks=masks, chat_template=lm.spec.chat_template)
    check_spans(tp, tokenizer, lm.mask_token_id)
    before, after = lm.spec.chat_template.split("{content}")
    text = before + prompt.text_before + after
    assert decode(tokenizer, tp.input_ids[:tp.answer_position]) == text
    assert tp.input_ids[:tp.answer_position] == tokenizer.encode(text, add_special_tokens=False)
    assert len(tp.input_ids) == tp.answer_position + (0 if lm.spec.causal else masks)
