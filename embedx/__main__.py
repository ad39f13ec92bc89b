"""`python -m embedx` and `accelerate launch -m embedx ...` enter here."""

from embedx.cli import main

if __name__ == "__main__":
    main()
