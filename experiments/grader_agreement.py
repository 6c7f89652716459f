"""Agreement of the builtin grader and HF math-verify on the project's grader case table.

  python experiments/grader_agreement.py [--show]

The cases are `EQUIVALENT` / `NOT_EQUIVALENT` of tests/test_math_grader.py (prediction,
reference, and whether they are the same answer). Both graders see the prediction in a
box (`grade_answer("\\boxed{prediction}", reference, grader=...)`); math-verify runs in its
hard-timeout worker. Prints each grader's accuracy against the labels and their agreement
(BUILD_NOTES.md, "Reliability (issue 15)"); --show lists the disagreements.
"""

from absl import app, flags

from marft_jax.training.entry import put_project_on_path

_SHOW = flags.DEFINE_bool("show", False, "List the cases where the graders disagree.")


def main(argv):
    del argv
    from marft_jax.envs.math.grader import grade_answer
    from tests.test_math_grader import EQUIVALENT, NOT_EQUIVALENT

    cases = [(p, r, True) for p, r in EQUIVALENT] + [(p, r, False) for p, r in NOT_EQUIVALENT]
    rows = []
    for prediction, reference, label in cases:
        response = f"\\boxed{{{prediction}}}"
        ours = grade_answer(response, reference)
        theirs = grade_answer(response, reference, grader="math_verify", timeout_s=5.0)
        rows.append((prediction, reference, label, ours, theirs))
    n = len(rows)
    agree = sum(o == t for *_, o, t in rows)
    print(f"cases: {n} ({len(EQUIVALENT)} equivalent, {len(NOT_EQUIVALENT)} not)")
    print(f"builtin correct:     {sum(o == l for _, _, l, o, _ in rows)}/{n}")
    print(f"math-verify correct: {sum(t == l for _, _, l, _, t in rows)}/{n}")
    print(f"agreement:           {agree}/{n} ({100 * agree / n:.1f} %)")
    for kind, label in (("equivalent", True), ("not equivalent", False)):
        sub = [r for r in rows if r[2] == label]
        print(f"  {kind}: agree {sum(o == t for *_, o, t in sub)}/{len(sub)}, "
              f"math-verify wrong on {sum(t != label for *_, t in sub)}, "
              f"builtin wrong on {sum(o != label for *_, o, _ in sub)}")
    if _SHOW.value:
        for prediction, reference, label, ours, theirs in rows:
            if ours != theirs:
                print(f"  {prediction!r} vs {reference!r}: label {label}, builtin {ours}, "
                      f"math-verify {theirs}")


if __name__ == "__main__":
    put_project_on_path()  # the cases come from tests/
    app.run(main)
