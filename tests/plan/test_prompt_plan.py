"""The prompt plan: its order, its one prompt key, the condition each prompt carries, the fit check."""

import pytest

from mdlm_interp.errors import UsageError
from mdlm_interp.plan import Condition, PlanRow, PromptPlan, check_context, example_index, plan_prompts, prompt_key
from mdlm_interp.subject import subject_from

TASKS = ("adjective+largest", "verb+smallest")


def test_rows_run_condition_then_task_then_prompt():
    plan = PromptPlan(tasks=",".join(TASKS), masks="1,4", filler=" .", placements="random,query-at:1", n=2)
    conditions = plan.conditions(causal=False)
    assert conditions == [Condition(1, False, "random"), Condition(4, False, "random"),
                          Condition(1, False, "query-at:1"), Condition(4, False, "query-at:1"),
                          Condition(4, True, "random"), Condition(4, True, "query-at:1")]
    assert plan.conditions(causal=True) == conditions[:4]  # a causal model takes no filler control
    rows = plan.rows(conditions[:2])
    assert rows == [PlanRow(c, t, i) for c in conditions[:2] for t in (0, 1) for i in (0, 1)]
    assert [plan.example(row) for row in rows] == [0, 1, 2, 3] * 2


def test_the_prompt_key_inverts_the_example_index():
    plan = PromptPlan(tasks=",".join(TASKS), n=3, seed=7)
    for row in plan.rows(plan.conditions(causal=False)):
        example = plan.example(row)
        assert example == example_index(row.task, row.prompt, 3) == row.task * 3 + row.prompt
        assert prompt_key(7, TASKS[row.task], example, plan.n) == f"7:{TASKS[row.task]}:{row.prompt}"


def test_too_many_rows_are_refused_before_they_are_built():
    plan = PromptPlan(tasks="all", n=10_000_000)
    with pytest.raises(UsageError, match="rows planned"):
        plan.rows(plan.conditions(causal=False))


def test_every_prompt_carries_the_condition_it_was_planned_under(tiny_model):
    lm = tiny_model("llada")
    plan = PromptPlan(tasks=",".join(TASKS), masks="1,3", filler=" .", placements="random,query-at:2", n=2,
                      n_relevant=2, n_distractor=3)
    rows = plan.rows(plan.conditions(causal=False))
    prompts = plan_prompts(subject_from(lm), plan, rows)
    assert [Condition.of(tp) for tp in prompts] == [row.condition for row in rows]
    # prompt i of a task is the same prompt under every condition of a placement
    by_key = {}
    for row, tp in zip(rows, prompts):
        key = (prompt_key(plan.seed, TASKS[row.task], plan.example(row), plan.n), row.condition.placement)
        by_key.setdefault(key, set()).add(tp.prompt)
    assert len(by_key) == 2 * 2 * 2 and all(len(same) == 1 for same in by_key.values())


def test_a_causal_prompt_has_no_masks(tiny_model):
    lm = tiny_model("llama")
    plan = PromptPlan(tasks=TASKS[0], n=1, n_relevant=2, n_distractor=3)
    [tp] = plan_prompts(subject_from(lm), plan, plan.rows(plan.conditions(causal=True)))
    assert Condition.of(tp) == Condition(0, False, "random")


def test_prompts_longer_than_the_context_are_refused(tiny_model):
    lm = tiny_model("llada")
    subject = subject_from(lm)
    context = subject.max_length
    plan = PromptPlan(tasks=TASKS[0], masks=(context,), n=1, n_relevant=2, n_distractor=3)
    with pytest.raises(UsageError, match=f"longer than the model's context of {context}"):
        check_context(subject, plan)
    with pytest.raises(UsageError, match=r"prompts reach \d+ tokens"):
        plan_prompts(subject, plan, plan.rows(plan.conditions(causal=False)))
    fitting = PromptPlan(tasks=TASKS[0], masks=(3,), n=1, n_relevant=2, n_distractor=3)
    check_context(subject, fitting)  # no error: a prompt of 3 masks fits
    assert len(plan_prompts(subject, fitting, fitting.rows(fitting.conditions(causal=False)))) == 1
