"""Run a command-line entry point in this process, the way the tests of the CLIs do."""


def run_main(main, capsys, *argv) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``main(argv)``; argparse's own errors exit via SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors (unknown option, bad value) and --help
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err
