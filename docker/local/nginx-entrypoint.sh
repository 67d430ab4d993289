#!/bin/sh
# Entry point of warmhouse-local/nginx, doing what the official nginx image's
# does with templates: every /etc/nginx/templates/NAME.template becomes
# /etc/nginx/conf.d/NAME with the environment variables whose names match
# NGINX_ENVSUBST_FILTER (a regular expression; all when unset) substituted
# (envsubst). Then the command runs (by default nginx in the foreground).
set -eu

templates=/etc/nginx/templates
out=/etc/nginx/conf.d
if [ -d "$templates" ]; then
  filter=${NGINX_ENVSUBST_FILTER:-}
  names=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' | grep -E -- "${filter:-.}" || true)
  defined=""
  for name in $names; do defined="$defined \${$name}"; done
  for template in "$templates"/*.template; do
    [ -e "$template" ] || continue
    target="$out/$(basename "$template" .template)"
    echo "nginx-entrypoint: $template -> $target" >&2
    envsubst "$defined" <"$template" >"$target"
  done
fi
exec "$@"
