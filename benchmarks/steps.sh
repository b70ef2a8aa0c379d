# Resumable steps for the benchmark scripts (sourced): `step NAME CMD...` runs CMD once, its
# output in $STEPS_DIR/NAME.log; a finished step leaves $STEPS_DIR/NAME.done and is skipped.
step() {
  local name=$1; shift
  [ -f "$STEPS_DIR/$name.done" ] && { echo "[$(date +%H:%M:%S)] $name: done before, skipped"; return; }
  echo "[$(date +%H:%M:%S)] $name"
  "$@" > "$STEPS_DIR/$name.log" 2>&1
  touch "$STEPS_DIR/$name.done"
}
