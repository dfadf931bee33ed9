"""One exception type for problems the user can fix; the CLI prints it as one line and exits 2."""


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (a newline, a tab, an escape, a line
    separator) written as its Python escape, so a value the user gave can never split or recolour the
    one line an error is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and what to do. Its text is always
    one line (``one_line``): a control character in a value it quotes is shown escaped."""

    def __str__(self) -> str:
        return one_line(super().__str__())
