#!/bin/sh
# Exit 0 if the engine in $1 (src/engine) defines, in a file its meson.build
# compiles, every control/incoming function pmvm links against.
dir=$1
for f in pm_control_start pm_control_stop pm_control_set_state pm_control_set_report \
         pm_control_set_dump_at_pause pm_control_state pm_incoming_listen \
         pm_incoming_address pm_incoming_run pm_incoming_close; do
  found=no
  for src in $(grep -lE "^[a-z].*[ *]$f\(" "$dir"/*.c 2>/dev/null); do
    if grep -q "$(basename "$src")" "$dir/meson.build"; then found=yes; fi
  done
  [ "$found" = yes ] || exit 1
done
exit 0
