// How a client's Accept header meets a stored media type. What a manifest references and its
// digest are registry vocabulary, in oci.ts.

/** The media types a client accepts; Node joins repeated Accept lines with ", ". */
export function acceptedTypes(accept: string | undefined): string[] {
  if (!accept) return []
  return accept
    .split(',')
    .map((part) => part.split(';')[0]!.trim().toLowerCase())
    .filter((t) => t.length > 0)
}

/** No Accept, or one that lists the type or a wildcard, takes the stored manifest as it is. */
export function accepts(accepted: string[], mediaType: string): boolean {
  return (
    accepted.length === 0 ||
    accepted.includes(mediaType) ||
    accepted.includes('*/*') ||
    accepted.includes('application/*')
  )
}
