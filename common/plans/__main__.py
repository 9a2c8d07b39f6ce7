"""python -m common.plans PLAN_DIR: each member's status, now."""
import collections
import sys

from common.console import guard_console
from common.errors import UserError
from common.plans.plan import describe, read_plan, statuses


def main(argv: list) -> None:
    guard_console()  # `... | head` closes the pipe: no traceback
    if len(argv) != 1:
        sys.exit("usage: python -m common.plans PLAN_DIR")
    try:
        the_plan = read_plan(argv[0])
    except UserError as e:
        sys.exit(f"error: {e}")
    now = statuses(the_plan)
    print(describe(the_plan) + "".join(f"\n  {member_id}: {status}" for member_id, status in now.items()))
    print(", ".join(f"{n} {status}" for status, n in sorted(collections.Counter(now.values()).items())))


if __name__ == "__main__":
    main(sys.argv[1:])
