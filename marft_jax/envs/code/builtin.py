"""A small built-in set of easy code problems (list and string functions), generated in
code for CPU runs and tests.

Each problem is a signature, a docstring, a reference body and a few inputs; the expected
outputs are computed by running the reference body here (trusted code), so the tests are
right by construction. Families with a parameter (`add_3`, `add_5`, ...) give several
problems from one template.
"""

from __future__ import annotations

import functools

from marft_jax.envs.code.datasets import CodeProblem, problem_from_record

_LISTS = ([1, 2, 3], [], [10, -4, 7, 0, 5], [6, 6, 9, 12, 15, 2], [-3, -8, 21, 14])
_STRINGS = ("hello world", "", "Racecar level", "a quick brown fox", "aeiou AEIOU xyz")

# name, arguments, docstring, body (indented), inputs (tuples of arguments).
_PARAMETRIC = [
    ("add_{k}", "numbers: list", "Return a new list with {k} added to every element.",
     "    return [x + {k} for x in numbers]\n", [(v,) for v in _LISTS], (1, 3, 7)),
    ("multiply_by_{k}", "numbers: list", "Return a new list with every element times {k}.",
     "    return [x * {k} for x in numbers]\n", [(v,) for v in _LISTS], (2, 3, 10)),
    ("count_greater_than_{k}", "numbers: list",
     "Return how many elements are strictly greater than {k}.",
     "    return sum(1 for x in numbers if x > {k})\n", [(v,) for v in _LISTS], (0, 5, 9)),
    ("keep_divisible_by_{k}", "numbers: list",
     "Return the elements divisible by {k}, in their original order.",
     "    return [x for x in numbers if x % {k} == 0]\n", [(v,) for v in _LISTS], (2, 3, 5)),
    ("repeat_{k}_times", "s: str", "Return the string s repeated {k} times.",
     "    return s * {k}\n", [(v,) for v in _STRINGS], (2, 3)),
    ("every_{k}th_char", "s: str",
     "Return every {k}th character of s, starting with the first.",
     "    return s[::{k}]\n", [(v,) for v in _STRINGS], (2, 3)),
    ("sum_first_{k}", "numbers: list",
     "Return the sum of the first {k} elements (of all of them if there are fewer).",
     "    return sum(numbers[:{k}])\n", [(v,) for v in _LISTS], (2, 4)),
]
_FIXED = [
    ("reverse_words", "s: str",
     "Return the words of s (separated by single spaces) in reverse order, joined by spaces.",
     "    return ' '.join(reversed(s.split(' '))) if s else ''\n", [(v,) for v in _STRINGS]),
    ("count_vowels", "s: str", "Return the number of vowels (a, e, i, o, u; any case) in s.",
     "    return sum(1 for c in s.lower() if c in 'aeiou')\n", [(v,) for v in _STRINGS]),
    ("is_palindrome", "s: str",
     "Return True if s reads the same forwards and backwards, ignoring case and spaces.",
     "    t = s.replace(' ', '').lower()\n    return t == t[::-1]\n",
     [("Racecar",), ("never odd or even",), ("hello",), ("",), ("ab",)]),
    ("max_minus_min", "numbers: list",
     "Return the largest element minus the smallest; 0 for an empty list.",
     "    return max(numbers) - min(numbers) if numbers else 0\n", [(v,) for v in _LISTS]),
    ("running_sum", "numbers: list",
     "Return the list of running sums: element i is the sum of numbers[0..i].",
     "    out, total = [], 0\n    for x in numbers:\n        total += x\n"
     "        out.append(total)\n    return out\n", [(v,) for v in _LISTS]),
    ("remove_duplicates", "numbers: list",
     "Return the list without repeated elements, keeping each first occurrence in order.",
     "    seen, out = set(), []\n    for x in numbers:\n        if x not in seen:\n"
     "            seen.add(x)\n            out.append(x)\n    return out\n",
     [([1, 2, 1, 3, 2],), ([],), ([5, 5, 5],), ([4, -1, 4, 0, -1],)]),
    ("capitalize_words", "s: str",
     "Return s with the first letter of every space-separated word in upper case.",
     "    return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))\n",
     [(v,) for v in _STRINGS]),
    ("count_char", "s: str, c: str", "Return how many times the character c occurs in s.",
     "    return s.count(c)\n", [("banana", "a"), ("", "x"), ("mississippi", "s"),
                                ("abc", "d")]),
    ("longest_word", "s: str",
     "Return the longest space-separated word of s (the first one on ties); '' for ''.",
     "    return max(s.split(' '), key=len) if s else ''\n", [(v,) for v in _STRINGS]),
    ("second_largest", "numbers: list",
     "Return the second largest distinct value, or None if there is none.",
     "    values = sorted(set(numbers))\n    return values[-2] if len(values) > 1 else None\n",
     [(v,) for v in _LISTS] + [([4, 4],)]),
    ("interleave", "a: list, b: list",
     "Return a[0], b[0], a[1], b[1], ...; the rest of the longer list follows at the end.",
     "    out = []\n    for i in range(max(len(a), len(b))):\n        if i < len(a):\n"
     "            out.append(a[i])\n        if i < len(b):\n            out.append(b[i])\n"
     "    return out\n", [([1, 2, 3], [7, 8]), ([], [1]), ([4], []), ([1, 2], [3, 4])]),
    ("swap_case", "s: str", "Return s with lower-case letters in upper case and vice versa.",
     "    return s.swapcase()\n", [(v,) for v in _STRINGS]),
]


def _problem(index: int, name: str, args: str, doc: str, body: str,
             inputs: list[tuple]) -> CodeProblem:
    prompt = f'def {name}({args}):\n    """{doc}"""\n'
    namespace: dict = {}
    exec(prompt + body, namespace)  # trusted reference code: computes the expected outputs
    function = namespace[name]
    asserts = [f"    assert candidate({', '.join(map(repr, x))}) == {function(*x)!r}"
               for x in inputs]
    test = "def check(candidate):\n" + "\n".join(asserts) + "\n"
    return problem_from_record(dict(task_id=f"builtin/{index}", prompt=prompt,
                                    canonical_solution=body, test=test, entry_point=name),
                               f"builtin problem {name}")


@functools.lru_cache(maxsize=1)
def _all() -> tuple[CodeProblem, ...]:
    specs = []
    for name, args, doc, body, inputs, values in _PARAMETRIC:
        for k in values:
            specs.append((name.format(k=k), args, doc.format(k=k), body.format(k=k), inputs))
    specs.extend(_FIXED)
    return tuple(_problem(i, *spec) for i, spec in enumerate(specs))


def builtin_problems() -> list[CodeProblem]:
    """The built-in problems, in a fixed order (split them with
    `envs.math.arithmetic.split_problems`, which works on any problem with a `.problem`)."""
    return list(_all())
