#!/bin/bash
# perf record of the server during mcl bench, both builds (as benchmarks/profiles/2026-12-06/perf.txt)
# As run on 2026-12-06: /work/main is the checkout (pure build), /tmp/perfc a copy of it compiled in place
# (benchmarks/builds.py: copy_checkout, compile_in_place).
out=/tmp/perfout/perf.txt; : > $out
echo "perf record -F 999 -g -p <server> for 10 s during 'mcl bench' (W1 -c 1 --get-ratio 1, W3 -c 4 --multiget 100 --get-ratio 1, W6 -c 4 --pipeline 100 --get-ratio 0), server pinned to CPU 1, load on CPU 0; code 8061674; shares of the server's samples by object, then by symbol ([k] kernel)." >> $out
for build in pure compiled; do
  if [ $build = pure ]; then tree=/work/main; else tree=/tmp/perfc; fi
  dir=$(mktemp -d)
  cd $tree; PYTHONPATH=$tree PYTHONHASHSEED=0 taskset -c 1 python3 -m memcachedlite serve --port 19811 --data-file $dir/data.txt > $dir/log 2>&1 &
  pid=$!
  sleep 3
  grep -o "[a-z]* build" $dir/log | head -1
  for w in "W1:-c 1 --get-ratio 1" "W3:-c 4 --multiget 100 --get-ratio 1" "W6:-c 4 --pipeline 100 --get-ratio 0"; do
    name=${w%%:*}; args=${w#*:}
    echo "" >> $out; echo "== $build $name" >> $out
    taskset -c 0 python3 -m memcachedlite -s 127.0.0.1:19811 bench $args --warmup 1 -d 11 > $dir/bench.txt 2>&1 &
    bpid=$!
    sleep 1.5
    perf record -F 999 -g -p $pid -o $dir/perf.data -- sleep 10 > /dev/null 2>&1
    wait $bpid
    grep -i "throughput" $dir/bench.txt >> $out
    perf report -i $dir/perf.data --stdio --no-children --sort dso 2>/dev/null | grep -E "^ +[0-9]" | head -8 >> $out
    perf report -i $dir/perf.data --stdio --no-children --sort sym -g none 2>/dev/null | grep -E "^ +[0-9]" | head -25 >> $out
  done
  kill $pid; wait $pid 2>/dev/null
done
