/** What getattr reports, independent of the FUSE binding. */
export interface FileStat {
  mode: number
  uid: number
  gid: number
  size: number
  nlink: number
  blocks: number
  blksize: number
  mtimeMs: number
}

/** A name's volume, whether it is sealed (can no longer change), and its attributes. */
export interface Identity {
  volumeId: string
  sealed: boolean
  stat: FileStat
}

export interface FsStat {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  namemax: number
}

/** Extended attributes cinderfs answers; everything else is ENODATA. */
export const xattrNames = {
  volumeId: 'user.cinderfs.volume_id',
  md5: 'user.cinderfs.md5',
  sha512: 'user.cinderfs.sha512',
  glanceImageId: 'user.cinderfs.glance_image_id',
  sizeHint: 'user.cinderfs.size_hint',
} as const
