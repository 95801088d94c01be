// Signing in as a client does: the password grant of POST /v1/auth/token. Used by the
// `load` command and the benchmarks, which drive Mercato through its front door.
export interface Login {
  username: string
  password: string
}

/** An access token for `login` from the Mercato at `url`; throws with the answer when refused. */
export async function signIn(url: string, login: Login): Promise<string> {
  const response = await fetch(`${url}/v1/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ grant_type: 'password', ...login }),
    signal: AbortSignal.timeout(10_000),
  })
  const body = (await response.json().catch(() => ({}))) as { access_token?: string; detail?: string }
  if (response.status !== 200 || !body.access_token)
    throw new Error(`signing in as ${login.username} failed: ${response.status} ${body.detail ?? ''}`)
  return body.access_token
}

/** Parses `user:password,user:password`. */
export function parseLogins(raw: string): Login[] {
  return raw.split(',').map((pair) => {
    const at = pair.indexOf(':')
    if (at <= 0) throw new Error(`a login is user:password, got "${pair}"`)
    return { username: pair.slice(0, at), password: pair.slice(at + 1) }
  })
}
