# Locating JDKs (sourced by build.sh and bootstrap). POSIX sh.
#
# Candidates, in order: the JDK of `java`/`javac` on PATH, $JAVA_HOME, then every directory under
# /usr/lib/jvm, /usr/java and /opt/java. A JDK's major version is read from its `release` file, so no JVM is
# started to find one.

# jdk_major HOME: prints the major version of the JDK at HOME (8 for "1.8.0_x"), or nothing.
jdk_major() {
  v=$(sed -n 's/^JAVA_VERSION="\([^"]*\)".*/\1/p' "$1/release" 2>/dev/null | head -n 1)
  case "$v" in
    1.*) v=${v#1.}; echo "${v%%.*}" ;;
    "") ;;
    *) v=${v%%.*}; echo "${v%%[!0-9]*}" ;;
  esac
}

# jdk_candidates: prints candidate JDK homes, one a line.
jdk_candidates() {
  for tool in java javac; do
    p=$(command -v "$tool" 2>/dev/null) || continue
    p=$(readlink -f "$p" 2>/dev/null) || continue
    dirname "$(dirname "$p")"
  done
  [ -n "${JAVA_HOME:-}" ] && echo "$JAVA_HOME"
  for d in /usr/lib/jvm/* /usr/java/* /opt/java/*; do
    [ -d "$d" ] && readlink -f "$d"
  done
  return 0
}

# find_java MAJOR: prints the home of a JDK or JRE of exactly that major version with bin/java.
find_java() {
  for h in $(jdk_candidates); do
    if [ -x "$h/bin/java" ] && [ "$(jdk_major "$h")" = "$1" ]; then
      echo "$h"
      return 0
    fi
  done
  return 1
}

# find_javac MIN: prints the home of a JDK with bin/javac whose major version is at least MIN.
find_javac() {
  for h in $(jdk_candidates); do
    m=$(jdk_major "$h")
    if [ -x "$h/bin/javac" ] && [ -n "$m" ] && [ "$m" -ge "$1" ]; then
      echo "$h"
      return 0
    fi
  done
  return 1
}
