#!/bin/sh
# install-debs DIR: installs every package file in DIR with dpkg, offline
# (scripts/images.sh put there a package and whatever it needs beyond the
# base image), starts no service, and removes DIR and dpkg's leftovers.
set -eu
dir=$1
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive dpkg --install --force-confdef --force-confold "$dir"/*.deb
rm -f /usr/sbin/policy-rc.d
rm -rf "$dir" /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/dpkg.log /var/log/apt/*
