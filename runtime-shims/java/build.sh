#!/bin/sh
# Compiles the Java runtime shim (src/) into build/lmi-java-runtime.jar with any JDK >= 17, targeting
# Java 17 bytecode, so one build serves java17, java21 and java25. Cached: nothing is compiled when
# build/source.sha256 matches the sources. Safe to run concurrently (a lock serialises builds; the jar is
# replaced by an atomic rename, so running JVMs keep the file they opened).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/jdk.sh"
out="$here/build"
jar="$out/lmi-java-runtime.jar"
stamp="$out/source.sha256"

source_hash() {
  (cd "$here" && find src -name '*.java' -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

up_to_date() {
  [ -f "$jar" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]
}

hash=$(source_hash)
up_to_date && exit 0
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
up_to_date && exit 0   # another build finished while we waited

home=$(find_javac 17) || { echo "java shim: no JDK >= 17 with javac found" >&2; exit 1; }
tmp=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
find "$here/src" -name '*.java' -type f > "$tmp/sources"
"$home/bin/javac" --release 17 -encoding UTF-8 -Xlint:all -Werror -d "$tmp/classes" "@$tmp/sources"
"$home/bin/jar" --create --file "$tmp/lmi-java-runtime.jar" -C "$tmp/classes" .
mv -f "$tmp/lmi-java-runtime.jar" "$jar"
echo "$hash" > "$stamp.tmp" && mv -f "$stamp.tmp" "$stamp"
echo "java shim: built $jar with $home" >&2
