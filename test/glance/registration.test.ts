import t from 'tap'
import { candidates, EXIT, exitCodeOf, formatDecision, locationOf, namesVolume, summarize, type Decision, type Outcome } from '../../src/glance/registration.js'
import type { Volume } from '../../src/model/volume.js'

const vol = '0f6ec6e4-3d1c-4d8e-9a57-9e6c2a1b2c3d'
const image = '8a1f3c1e-0b7e-4a4c-9d7d-3f1c2b6a9e10'

t.test('location URLs: multi-store and single-store forms, and either names the volume', async t => {
  t.same(locationOf(vol, 'cinder1'), { url: `cinder://cinder1/${vol}`, metadata: { store: 'cinder1' } })
  t.same(locationOf(vol, undefined), { url: `cinder://${vol}`, metadata: {} })
  t.ok(namesVolume(`cinder://${vol}`, vol))
  t.ok(namesVolume(`cinder://cinder1/${vol}`, vol))
  t.notOk(namesVolume(`file:///var/lib/glance/images/${vol}`, vol), 'a file location never names a volume')
  t.notOk(namesVolume(`cinder://cinder1/${vol}x`, vol))
})

function volume(name: string, metadata: Record<string, string>): Volume {
  return { id: vol, name, sizeGiB: 1, status: 'available', metadata, readOnly: true, multiattach: false, createdAt: new Date(0), updatedAt: new Date(0) }
}

t.test('candidates: complete image volumes named by an image id only', async t => {
  const all = [
    volume(`image-${image}`, { image_size: '5', cinderfs_md5: 'x' }),
    volume('image-cirros.img', { image_size: '5' }),
    volume(`image-${image}`, { image_size: '5', cinderfs_state: 'uploading' }),
    volume(`data-${image}`, { image_size: '5' }),
  ]
  t.same(candidates(all), [all[0]])
})

t.test('exit codes: a failure beats a mismatch beats images left alone', async t => {
  const decisions = (...outcomes: Outcome[]): Decision[] => outcomes.map(outcome => ({ imageId: image, volumeId: vol, outcome, reason: 'r', retired: [], dryRun: false }))
  t.equal(exitCodeOf(decisions('registered', 'already-there')), EXIT.ok)
  t.equal(exitCodeOf(decisions('registered', 'not-in-glance')), EXIT.skipped)
  t.equal(exitCodeOf(decisions('empty', 'mismatch')), EXIT.mismatch)
  t.equal(exitCodeOf(decisions('mismatch', 'failed')), EXIT.failed)
  t.equal(exitCodeOf([]), EXIT.ok)
  const dry: Decision = { imageId: image, volumeId: vol, outcome: 'registered', reason: 'would be added', retired: ['file:///x'], dryRun: true }
  t.match(formatDecision(dry), new RegExp(`^would-register ${image} volume ${vol}: would be added$`))
  t.match(summarize([dry]), /^summary: 1 images: 1 registered, .* 1 old locations retired \(dry run: nothing changed\)$/)
})
