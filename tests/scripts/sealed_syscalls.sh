#!/bin/bash
# usage: tests/scripts/sealed_syscalls.sh <bin-dir (absolute)> <label>   (root; from the workspace)
# Runs the cladnet-sealed bench row with a long ping phase and counts, per agent thread,
# syscalls and context switches over 5 s of pings (20 ms apart: ~250 echo round trips).
set -u
DIR=$1; LABEL=$2
BENCH=${BENCH:-target/release/cladnet-bench}
$BENCH dataplane --bin-dir "$DIR" --only cladnet-sealed --runs 1 --secs 1 --ping-count 750 \
  --quiet-wait-secs 0 --out /tmp/mq-syscalls-$LABEL.json > /tmp/mq-syscalls-$LABEL.bench.log 2>&1 &
BPID=$!
agents() { for p in $(pgrep -x cladnet-agent); do [ "$(readlink /proc/$p/exe)" = "$DIR/cladnet-agent" ] && echo $p; done; }
for i in $(seq 1 240); do
  if pgrep -f 'ping -n -c 750' >/dev/null; then break; fi; sleep 0.5
done
sleep 2
A=$(agents | paste -sd,)
echo "agents: $A" 
uptime
perf stat --per-thread -e task-clock,cs,raw_syscalls:sys_enter -p "$A" -o /tmp/mq-perf-$LABEL.txt -- sleep 5
wait $BPID
grep -i 'rtt\|sealed' /tmp/mq-syscalls-$LABEL.bench.log | tail -5
