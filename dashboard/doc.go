// Package dashboard serves Ferry's Migration Hub web interface: plain
// HTML, CSS and JavaScript modules embedded in the binary (no build step,
// no CDN, works offline). The page signs in with an API token, kept in the
// tab's sessionStorage and sent as a bearer token to the API; live updates
// come from the API's server-sent events.
package dashboard
