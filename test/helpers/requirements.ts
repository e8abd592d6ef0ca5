import fs from 'node:fs'

/**
 * Why a test that needs real kernel parts cannot run here, or false when it can.
 * Pass the result as tap's `skip` option: the runner prints the reason and counts
 * the test as skipped, never as passed.
 */
export function needsRoot(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (FUSE mounts, loop devices)'
  return false
}

export function needsFuse(): string | false {
  const root = needsRoot()
  if (root !== false) return root
  if (!fs.existsSync('/dev/fuse')) return 'needs /dev/fuse'
  return false
}

export function needsLoopDevices(): string | false {
  const root = needsRoot()
  if (root !== false) return root
  if (!fs.existsSync('/dev/loop-control')) return 'needs loop devices (/dev/loop-control)'
  return false
}
