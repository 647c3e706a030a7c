"""runner.py FILE.py -- run one integration test module with unittest and count its outcomes.

Prints unittest's verbose report, then one last line that scripts/run-tests.sh reads:

    lmserve-counts passed=P failed=F skipped=S

Every outcome counts once: a test that passes, fails, errors or is skipped; an error in a
class or module fixture (setUpClass, tearDownModule, ...) counts as one failure of its own,
as does a module that cannot be imported.  (unittest's own "Ran N tests" leaves fixture
errors out of N, which made "N - failures - errors" negative.)  The exit status is 0 only
when nothing failed.  A run that dies before this line is counted as failed by the caller.
"""
import importlib
import os
import sys
import traceback
import unittest


class CountingResult(unittest.TextTestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.n_passed = self.n_failed = self.n_skipped = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.n_passed += 1

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.n_failed += 1

    def addError(self, test, err):
        super().addError(test, err)
        self.n_failed += 1

    def addSubTest(self, test, subtest, err):
        # a failing subtest is reported here and its test then reports no success
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.n_failed += 1

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.n_skipped += 1

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.n_passed += 1

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.n_failed += 1


def main(argv):
    if len(argv) != 2 or not argv[1].endswith(".py"):
        print("usage: runner.py tests/integration/test_NAME.py", file=sys.stderr)
        return 2
    path = os.path.abspath(argv[1])
    sys.path.insert(0, os.path.dirname(path))
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        module = importlib.import_module(name)
    except BaseException:  # noqa: BLE001 -- any import failure is this suite's failure
        traceback.print_exc()
        print("%s: cannot import the test module" % argv[1], file=sys.stderr)
        print("lmserve-counts passed=0 failed=1 skipped=0", flush=True)
        return 1
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(module)
    runner = unittest.TextTestRunner(verbosity=2, resultclass=CountingResult, stream=sys.stderr)
    result = runner.run(suite)
    failed = result.n_failed  # loader errors become failing tests of their own
    if result.testsRun == 0 and failed == 0:
        print("%s: no test ran" % argv[1], file=sys.stderr)
        failed = 1
    sys.stderr.flush()
    print("lmserve-counts passed=%d failed=%d skipped=%d" % (result.n_passed, failed, result.n_skipped),
          flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
