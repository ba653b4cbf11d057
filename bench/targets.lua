-- Targets from the issues, checked by scripts/bench against the figures of
-- a run. A missed target is reported, never a failure.
-- Each: suite, bench, metric, optional workers (nil: every row), op, value,
-- optional field (default "value"; "ratio": against the peer of the same
-- run, > 1 meaning ahead).
return {
  -- executor (issue: foundation)
  { suite = "executor", bench = "spawn_latency", metric = "p50", op = "<=", value = 25 },
  { suite = "executor", bench = "spawn_latency", metric = "p99", op = "<", value = 100 },
  { suite = "executor", bench = "throughput", metric = "tasks_per_s", workers = 2, op = ">=", value = 20e6 },
  { suite = "executor", bench = "fib30", metric = "t1_over_tseq", op = "<=", value = 8 },
  { suite = "executor", bench = "fib30", metric = "t1_over_t2", op = ">=", value = 1.85 },
  { suite = "executor", bench = "cpu_bound", metric = "utilization", op = ">=", value = 0.95 },
  { suite = "executor", bench = "steal", metric = "attempts_per_steal", op = "<", value = 4 },
  -- executor (issue: fork-join at Rayon's speed): at least level with Rayon
  { suite = "executor", bench = "fib30_join", metric = "s", field = "ratio", op = ">=", value = 1 },
  { suite = "executor", bench = "skynet_join", metric = "s", field = "ratio", op = ">=", value = 1 },
  { suite = "executor", bench = "trivial_spawns", metric = "tasks_per_s", field = "ratio", op = ">", value = 1 },
  -- cancel (issue: cancellation, nurseries, reactor)
  { suite = "cancel", bench = "token_is_cancelled", metric = "ns", op = "<=", value = 2 },
  { suite = "cancel", bench = "token_child_create_drop", metric = "ns", op = "<=", value = 50 },
  { suite = "cancel", bench = "cancel_10k_waiters", metric = "ms_to_last_wake", op = "<=", value = 2 },
  { suite = "cancel", bench = "timers_100k", metric = "p99_lateness_ms", op = "<=", value = 2 },
  -- cancel (issues: Lua on every core; fork-join at Rayon's speed): a C nursery child
  -- about as cheap as a group task
  { suite = "cancel", bench = "nursery_spawn_wait_10", metric = "ns_per_child", op = "<=", value = 100 },
  -- lua (issue: Lua on every core)
  { suite = "lua", bench = "spawn_latency", metric = "p50", op = "<=", value = 300 },
  { suite = "lua", bench = "spawn_latency", metric = "p99", op = "<=", value = 1000 },
  { suite = "lua", bench = "throughput", metric = "tasks_per_s", workers = 2, op = ">=", value = 1e6 },
  { suite = "lua", bench = "spawn_local_throughput", metric = "tasks_per_s", workers = 2, op = ">=", value = 3e6 },
  { suite = "lua", bench = "cpu_bound_lua", metric = "speedup", op = ">=", value = 1.9 },
  { suite = "lua", bench = "cpu_bound_lua", metric = "t1_over_plain", op = "<=", value = 1.05 },
  -- the same work through a helper function, as tasks usually are
  { suite = "lua", bench = "cpu_bound_lua_helper", metric = "speedup", op = ">=", value = 1.9 },
  { suite = "lua", bench = "cpu_bound_lua_helper", metric = "t1_over_plain", op = "<=", value = 1.05 },
  { suite = "lua", bench = "sleeping_task", metric = "bytes", op = "<=", value = 1536 },
  { suite = "lua", bench = "sleeping_task_portable", metric = "bytes", op = "<=", value = 1536 },
  { suite = "lua", bench = "rendezvous", metric = "msgs_per_s", op = ">=", value = 1e6 },
  { suite = "lua", bench = "rendezvous_1m", metric = "msgs_per_s", op = ">=", value = 1e6 },
  { suite = "lua", bench = "sleepers_1m", metric = "spawn_s", op = "<=", value = 2 },
  { suite = "lua", bench = "sleepers_1m", metric = "cancel_s", op = "<=", value = 1 },
  { suite = "lua", bench = "sleepers_1m", metric = "sigint_exit_s", op = "<=", value = 2 },
  { suite = "lua", bench = "sleepers_1m", metric = "rss", op = "<=", value = 1536 },
  { suite = "lua", bench = "sleepers_1m_local", metric = "spawn_s", op = "<=", value = 2 },
  { suite = "lua", bench = "sleepers_1m_local", metric = "cancel_s", op = "<=", value = 1 },
  { suite = "lua", bench = "sleepers_1m_local", metric = "rss", op = "<=", value = 1536 },
  { suite = "lua", bench = "channel", metric = "msgs_per_s", workers = 2, op = ">=", value = 5e6 },
  -- cli (issue: knhk-lua command)
  { suite = "cli", bench = "startup", metric = "ms", op = "<", value = 10 },
  { suite = "cli", bench = "startup", metric = "vs_luajit", op = "<=", value = 2 },
  -- patterns (issue: workflow patterns): the layer over direct nursery code
  { suite = "patterns", bench = "mi_10k", metric = "overhead", op = "<=", value = 1.2 },
  -- telemetry (issue: OpenTelemetry): recording costs at most 10 % of spawn throughput
  { suite = "telemetry", bench = "c_nursery_spawn", metric = "tasks_per_s", field = "ratio", op = ">=", value = 0.9 },
  { suite = "telemetry", bench = "c_submit", metric = "tasks_per_s", field = "ratio", op = ">=", value = 0.9 },
  { suite = "telemetry", bench = "lua_spawn", metric = "tasks_per_s", field = "ratio", op = ">=", value = 0.9 },
  { suite = "telemetry", bench = "lua_spawn_local", metric = "tasks_per_s", field = "ratio", op = ">=", value = 0.9 },
}
