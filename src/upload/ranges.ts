/** A half-open byte range [from, to). */
export interface Range {
  from: number
  to: number
}

/** Adds [from, to) to sorted, disjoint ranges, merging what touches or overlaps it. */
export function addRange(ranges: Range[], from: number, to: number): void {
  if (to <= from) return
  let i = 0
  while (i < ranges.length && (ranges[i]?.to ?? 0) < from) i++
  let j = i
  let start = from
  let end = to
  for (let next = ranges[j]; next !== undefined && next.from <= to; next = ranges[++j]) {
    start = Math.min(start, next.from)
    end = Math.max(end, next.to)
  }
  ranges.splice(i, j - i, { from: start, to: end })
}
