#!/bin/sh
# Builds the ringway .deb with dpkg-deb alone (no cargo-deb needed) from the same metadata
# cargo-deb reads: Cargo.toml's [package.metadata.deb] assets, conffiles and maintainer scripts.
#
#   config/debian/build-deb.sh [BINARY] [OUT_DIR]
#
# BINARY defaults to target/release/ringway (build it first: cargo build --release), OUT_DIR to
# target/debian. DEB_COMPRESSION (xz by default; gzip, zstd or none) is dpkg-deb's -Z: the
# tests use none, since xz takes minutes over a debug binary. Prints the path of the .deb it wrote. Needs dpkg-deb (Debian package `dpkg`);
# runs as any user (--root-owner-group makes every file root's in the archive).
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$repo/target/release/ringway}
out=${2:-$repo/target/debian}
[ -x "$bin" ] || { echo "build-deb: no executable at $bin (cargo build --release first)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb not found (Debian package dpkg)" >&2; exit 1; }

toml="$repo/Cargo.toml"
# The [package] version and description, and the [package.metadata.deb] table's lines.
version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$toml" | head -n1)
description=$(sed -n '/^\[package\]/,/^\[/s/^description *= *"\(.*\)"/\1/p' "$toml" | head -n1)
deb=$(sed -n '/^\[package\.metadata\.deb\]/,/^\[\[*[a-z]/p' "$toml")
field() { printf '%s\n' "$deb" | sed -n "s/^$1 *= *\"\(.*\)\"/\1/p" | head -n1; }
[ -n "$version" ] && [ -n "$description" ] || { echo "build-deb: no version/description in $toml" >&2; exit 1; }
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)

stage=$(mktemp -d "${TMPDIR:-/tmp}/ringway-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/ringway_${version}_$arch"
mkdir -p "$root/DEBIAN"

# assets = [ ["source", "dest", "mode"], ... ]: one asset per line, as Cargo.toml writes them.
printf '%s\n' "$deb" | sed -n 's/^ *\[ *"\([^"]*\)" *, *"\([^"]*\)" *, *"\([0-7]*\)" *\],*$/\1 \2 \3/p' |
while read -r src dest mode; do
    case "$src" in
        target/release/ringway) from=$bin ;;
        *) from=$repo/$src ;;
    esac
    [ -f "$from" ] || { echo "build-deb: asset $src is missing" >&2; exit 1; }
    case "$dest" in
        */) to="$root/$dest$(basename "$src")" ;;
        *) to="$root/$dest" ;;
    esac
    mkdir -p "$(dirname "$to")"
    cp "$from" "$to"
    chmod "$mode" "$to"
done

# conf-files = ["/etc/..."], maintainer-scripts = "config/debian/".
printf '%s\n' "$deb" | sed -n 's/^conf-files *= *\[\(.*\)\]/\1/p' | tr ',' '\n' |
    sed -n 's/^ *"\(.*\)" *$/\1/p' >"$root/DEBIAN/conffiles"
scripts=$repo/$(field maintainer-scripts)
for s in preinst postinst prerm postrm; do
    if [ -f "$scripts/$s" ]; then
        # cargo-deb fills #DEBHELPER#; nothing is generated here, so the marker goes.
        sed '/^#DEBHELPER#$/d' "$scripts/$s" >"$root/DEBIAN/$s"
        chmod 755 "$root/DEBIAN/$s"
    fi
done

# $auto in cargo-deb's depends means the binary's shared-library packages: dpkg-shlibdeps
# when it is installed (dpkg-dev), else the C library every Linux build links.
auto=
if command -v dpkg-shlibdeps >/dev/null; then
    mkdir -p "$stage/shlib/debian"
    : >"$stage/shlib/debian/control"
    auto=$(cd "$stage/shlib" && dpkg-shlibdeps -O "$root/usr/bin/ringway" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p') || auto=
fi
[ -n "$auto" ] || auto="libc6"
depends=$(field depends | sed "s/\\\$auto/$auto/")
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: ringway
Version: $version
Architecture: $arch
Maintainer: $(field maintainer)
Installed-Size: $size
Depends: $depends
Section: $(field section)
Priority: $(field priority)
Description: $description
 $(field extended-description)
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum >DEBIAN/md5sums)

mkdir -p "$out"
deb_file="$out/ringway_${version}_$arch.deb"
dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --build "$root" "$deb_file" >/dev/null
echo "$deb_file"
