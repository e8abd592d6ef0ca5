import t from 'tap'
import type { Volume } from '../../src/model/volume.js'
import { attributeMetadata, decodeImage, isImageVolume } from '../../src/store/metadata.js'

const owner = { uid: 1000, gid: 1000 }

function volume(name: string, metadata: Record<string, string>, sizeGiB = 2): Volume {
  const createdAt = new Date('2024-05-06T07:08:09.123Z')
  return { id: 'v1', name, sizeGiB, status: 'available', metadata, readOnly: true, multiattach: false, createdAt, updatedAt: createdAt }
}

t.test('a volume Glance wrote: image_size, mtime from created_at, defaults for POSIX', async t => {
  const attrs = decodeImage(volume('image-0b0f', { glance_image_id: '0b0f', image_size: '228599296', image_owner: 'p1' }), owner)
  t.equal(attrs.size, 228599296)
  t.equal(attrs.mtimeNs, 1714979289123n * 1_000_000n, 'mtime is created_at, in ns')
  t.equal(attrs.mode, 0o644)
  t.same([attrs.uid, attrs.gid], [1000, 1000])
  t.equal(attrs.state, 'final')
})

t.test("Cinder's own image volumes carry only image_owner: the whole volume is the image", async t => {
  t.equal(decodeImage(volume('image-x', { image_owner: 'p1' }, 3), owner).size, 3 * 1024 ** 3)
})

t.test('cinderfs keys round-trip', async t => {
  const written = attributeMetadata({ mtimeNs: 1700000000123000000n, mode: 0o100640, uid: 5, gid: 6 })
  t.same(written, { cinderfs_mtime_ns: '1700000000123000000', cinderfs_mode: '640', cinderfs_uid: '5', cinderfs_gid: '6' }, 'file type bits are dropped from the mode')
  const attrs = decodeImage(volume('image-a', { image_size: '5', ...written, cinderfs_md5: 'abc', cinderfs_sha512: 'def' }), owner)
  t.same([attrs.mtimeNs, attrs.mode, attrs.uid, attrs.gid, attrs.md5, attrs.sha512], [1700000000123000000n, 0o640, 5, 6, 'abc', 'def'])
})

t.test('bad or lying metadata falls back safely', async t => {
  const lying = decodeImage(volume('image-a', { image_size: String(5 * 1024 ** 3) }, 2), owner)
  t.equal(lying.size, 2 * 1024 ** 3, 'an image_size larger than the volume is clipped to the volume')
  const garbage = decodeImage(volume('image-a', { image_size: '12abc', cinderfs_mode: '999', cinderfs_mtime_ns: '-1' }), owner)
  t.equal(garbage.size, 2 * 1024 ** 3, 'a non-number image_size is ignored')
  t.equal(garbage.mode, 0o644, 'a non-octal mode is ignored')
  t.equal(garbage.mtimeNs, 1714979289123n * 1_000_000n, 'a bad mtime falls back to created_at')
})

t.test('upload state and generation', async t => {
  t.equal(decodeImage(volume('image-a', { cinderfs_state: 'uploading', cinderfs_host: 'h1' }), owner).state, 'uploading')
  t.equal(decodeImage(volume('image-a', { cinderfs_state: 'deleting' }), owner).host, undefined)
  t.equal(decodeImage(volume('image-a', { image_size: '1', cinderfs_renamed_at: '1800000000000' }), owner).generation, 1800000000000)
})

t.test('only image-<name> volumes with image metadata are images', async t => {
  t.ok(isImageVolume(volume('image-a', { image_size: '1' })))
  t.ok(isImageVolume(volume('image-a', { image_owner: 'p' })), 'image_owner alone is enough (Cinder-made image volumes)')
  t.notOk(isImageVolume(volume('image-a', {})), 'a volume named image-a without image metadata is not ours')
  t.notOk(isImageVolume(volume('boot-disk', { image_size: '1' })), 'a volume without the image- name is not an image')
  t.notOk(isImageVolume(volume('image-', { image_size: '1' })), 'an empty name is not an image')
})
