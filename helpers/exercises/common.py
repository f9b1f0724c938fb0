"""What every exercise check shares."""


def unanswered(answer: object) -> bool:
    """Print the not-yet-answered message when ``answer`` is None."""
    if answer is None:
        print("还没有作答：把答案赋给变量后重新运行这一格。")
        return True
    return False
