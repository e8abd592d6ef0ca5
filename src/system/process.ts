/**
 * Whether a process exists. EPERM means it does (it belongs to someone we may
 * not signal): a pid file naming it is not stale.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return typeof err === 'object' && err !== null && 'code' in err && err.code === 'EPERM'
  }
}
