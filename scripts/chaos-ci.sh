#!/usr/bin/env bash
# The bounded part of the chaos suite (make test-chaos-ci), run under gdb where it is
# installed, so that a crash of the pytest process itself leaves its native and Python
# stacks in the log. Python's faulthandler printed nothing the one time it died (a
# segfault, exit 139, in one of several runs), and no core can be written here (the
# kernel's core_pattern is "core", a directory of this repo). Only a crash is run once
# more, with the crash left in the log above the rerun's result; test failures are not.
#   usage: scripts/chaos-ci.sh PYTEST_BIN [pytest args...]
set -uo pipefail
pytest_bin=$1; shift
python_bin="$(dirname "$pytest_bin")/python"
gdb_script=$(mktemp)
trap 'rm -f "$gdb_script"' EXIT
cat > "$gdb_script" <<'GDB'
set pagination off
set confirm off
set print thread-events off
set print inferior-events off
handle SIGALRM SIGPIPE SIGCHLD SIGTERM SIGINT SIGUSR1 SIGUSR2 SIGCONT SIGWINCH nostop noprint pass
handle SIG32 SIG33 SIG34 SIG35 nostop noprint pass
run
if $_isvoid($_exitcode)
  echo \nchaos-ci: the pytest process got a fatal signal; its threads:\n
  info threads
  thread apply all bt 40
  echo \nchaos-ci: the Python stacks (faulthandler, if it answers), then the process ends\n
  set $signo = $_siginfo.si_signo
  signal $signo
  quit 128 + $signo
end
quit $_exitcode
GDB

run() {
  if command -v gdb >/dev/null 2>&1; then
    gdb -q -batch -x "$gdb_script" --args "$python_bin" "$pytest_bin" "$@"
  else
    "$pytest_bin" "$@"
  fi
}

run "$@"; code=$?
if [ $code -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
if [ $code -gt 128 ]; then
  echo "chaos-ci: the pytest process died of signal $((code - 128)) (exit $code; stacks above)" >&2
  echo "chaos-ci: running the suite once more after that crash" >&2
  run "$@"; code=$?
  [ $code -gt 128 ] && echo "chaos-ci: died of signal $((code - 128)) again (stacks above)" >&2
  [ $code -eq 5 ] && code=1
fi
exit $code
