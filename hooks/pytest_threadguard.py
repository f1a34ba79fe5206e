"""threadguard's pytest plugin: fail a test that leaves threads behind.

Registered through the ``pytest11`` entry point, so pytest loads it
wherever threadguard is installed; it does nothing until enabled with
``--threadguard-leaks`` or ``threadguard_leaks = true`` in the ini file.
Until then it imports nothing of threadguard's (importing threadguard
would start counting threads in the test process).  The checks are in
threadguard/_leakcheck.py; docs/leaks.md says what they catch.
"""


def pytest_addoption(parser):
    group = parser.getgroup("threadguard", "thread leaks (threadguard)")
    group.addoption("--threadguard-leaks", action="store_true", default=None,
                    help="fail a test that leaves Python or native threads behind (named by "
                         "their start site or creating library)")
    parser.addini("threadguard_leaks", type="bool", default=False,
                  help="fail tests that leave threads behind (as --threadguard-leaks)")
    parser.addini("threadguard_leaks_allow", type="linelist", default=[],
                  help="threads a test may leave behind: a library's file name or kind "
                       "(libcuda, openmp), or a pattern for a Python thread's name or start "
                       "site (*/server.py:*)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "threadguard_allow(*patterns): threads this test may leave behind "
                   "(as threadguard_leaks_allow)")
    enabled = config.getoption("threadguard_leaks")
    if enabled is None:
        enabled = config.getini("threadguard_leaks")
    if enabled:
        from threadguard._leakcheck import LeakCheck

        config.pluginmanager.register(LeakCheck(config.getini("threadguard_leaks_allow")),
                                      "threadguard-leakcheck")
