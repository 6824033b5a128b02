#!/bin/sh
# The official image's 20-envsubst-on-templates.sh, reduced: each
# /etc/nginx/templates/X.template becomes /etc/nginx/conf.d/X with only the variables
# that are set substituted (nginx's own $variables stay as they are).
set -eu
defined=$(printf '${%s} ' $(env | cut -d= -f1))
for template in /etc/nginx/templates/*.template; do
  [ -f "$template" ] || continue
  name=$(basename "$template" .template)
  envsubst "$defined" < "$template" > "/etc/nginx/conf.d/$name"
  echo "rendered $template -> /etc/nginx/conf.d/$name"
done
exec "$@"
