import fs from 'node:fs'

/** Kernel clock ticks per second for /proc/PID/stat times (USER_HZ; 100 on every Linux we run on). */
const ticksPerSecond = 100
/** PF_KTHREAD in /proc/PID/stat's flags field. */
const kernelThreadFlag = 0x00200000

interface ProcStat {
  flags: number
  /** utime + stime of the whole thread group, seconds. */
  cpu: number
  /** cutime + cstime: reaped children, seconds. */
  childCpu: number
}

/** Parses /proc/PID/stat; undefined when the process is gone. */
export function procStat(pid: number): ProcStat | undefined {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state); flags is field 9, utime..cstime are fields 14..17.
  const at = (field: number): number => Number(fields[field - 3])
  return {
    flags: at(9),
    cpu: (at(14) + at(15)) / ticksPerSecond,
    childCpu: (at(16) + at(17)) / ticksPerSecond,
  }
}

/** CPU seconds (all threads) a process has used so far, 0 when it is gone. */
export function processCpu(pid: number): number {
  return procStat(pid)?.cpu ?? 0
}

/** VmHWM (peak resident set) in bytes. */
export function peakRss(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const m = /^VmHWM:\s+(\d+) kB/m.exec(status)
  return m === null ? 0 : Number(m[1]) * 1024
}

/** Resets VmHWM to the current RSS (clear_refs 5), so each run reports its own peak. */
export function resetPeakRss(pid: number): void {
  fs.writeFileSync(`/proc/${pid}/clear_refs`, '5')
}

/**
 * One snapshot of where CPU time went, to tell our load from other sessions'
 * on a shared box: busy time of the whole machine, minus our processes
 * (this one with its reaped children, and the daemon), minus kernel threads
 * (loop workers and kswapd work for us and for others alike; we leave them out).
 */
export interface CpuSample {
  at: number
  busy: number
  ours: number
  kernelThreads: number
}

export function sampleCpu(ourPids: number[]): CpuSample {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? ''
  // cpu user nice system idle iowait irq softirq steal ...
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  const busy = ((v[0] ?? 0) + (v[1] ?? 0) + (v[2] ?? 0) + (v[5] ?? 0) + (v[6] ?? 0)) / ticksPerSecond
  let ours = 0
  for (const pid of ourPids) {
    const stat = procStat(pid)
    if (stat !== undefined) ours += stat.cpu + stat.childCpu
  }
  let kernelThreads = 0
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const stat = procStat(Number(entry))
    if (stat !== undefined && (stat.flags & kernelThreadFlag) !== 0) kernelThreads += stat.cpu
  }
  return { at: performance.now(), busy, ours, kernelThreads }
}

/** Cores used by other sessions between two samples. */
export function otherCores(from: CpuSample, to: CpuSample): number {
  const seconds = (to.at - from.at) / 1000
  if (seconds <= 0) return 0
  const other = (to.busy - from.busy) - (to.ours - from.ours) - (to.kernelThreads - from.kernelThreads)
  return Math.max(0, other / seconds)
}

export function loadAverage(): string {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
}
