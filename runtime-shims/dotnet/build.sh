#!/bin/sh
# Compiles the .NET runtime shim with Mono's C# compiler (mcs) into build/: Lmi.Lambda.Core.dll (the
# interfaces handlers compile against) and LmiLambdaRuntime.exe (the runtime). Cached: nothing is compiled
# when build/source.sha256 matches the sources. Safe to run concurrently (a lock serialises builds; files
# are replaced by atomic renames). On a .NET 8 SDK host, build src/Runtime/LmiLambdaRuntime.csproj instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build"
stamp="$out/source.sha256"

source_hash() {
  (cd "$here" && find src -name '*.cs' -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

up_to_date() {
  [ -f "$out/LmiLambdaRuntime.exe" ] && [ -f "$out/Lmi.Lambda.Core.dll" ] &&
    [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]
}

hash=$(source_hash)
up_to_date && exit 0
command -v mcs >/dev/null 2>&1 || { echo "dotnet shim: mcs (Debian: mono-mcs) not found" >&2; exit 1; }
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
up_to_date && exit 0   # another build finished while we waited

tmp=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mcs -nologo -warnaserror -debug -target:library -out:"$tmp/Lmi.Lambda.Core.dll" $(find "$here/src/Core" -name '*.cs')
mcs -nologo -warnaserror -debug -target:exe -out:"$tmp/LmiLambdaRuntime.exe" -r:"$tmp/Lmi.Lambda.Core.dll" \
  -r:System.Net.Http.dll $(find "$here/src/Runtime" -name '*.cs')
for f in Lmi.Lambda.Core.dll Lmi.Lambda.Core.dll.mdb LmiLambdaRuntime.exe LmiLambdaRuntime.exe.mdb; do
  mv -f "$tmp/$f" "$out/$f"
done
echo "$hash" > "$stamp.tmp" && mv -f "$stamp.tmp" "$stamp"
echo "dotnet shim: built $out with mcs" >&2
