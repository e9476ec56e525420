# Sourced by the device scripts (gpu_ceiling.sh, standin_chapters.sh): `step NAME TIMEOUT_S CMD...`
# runs CMD with at most min(TIMEOUT_S, what is left of $budget seconds since the script began),
# its output in $STEP_LOGS/NAME.log and a line NAME<TAB>rc<TAB>seconds in $STEP_LOGS/steps.tsv;
# a failing step does not stop the script. A stopped step gets 15 s after TERM before KILL.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget - SECONDS ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "== $name: skipped (budget spent)"; printf '%s\tskipped\t0\n' "$name" >> "$STEP_LOGS/steps.tsv"; return; fi
  local t0=$SECONDS
  echo "== $name (<= ${limit}s): $*"
  timeout -k 15 "$limit" "$@" > "$STEP_LOGS/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t0 ))" >> "$STEP_LOGS/steps.tsv"
  echo "   rc=$rc in $(( SECONDS - t0 ))s: $(tail -c 300 "$STEP_LOGS/$name.log" | tr '\n\r' '  ')"
}
