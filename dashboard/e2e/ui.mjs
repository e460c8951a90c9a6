// Drives Ferry's dashboard in headless Chromium; run by ../e2e_test.go,
// which starts a real server and passes its address and tokens in the
// environment. Prints "step: …" lines as it goes, "need: …" lines when it
// wants the Go side to change the store, and "ok" at the end; exits 1 on
// the first failure.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const { FERRY_URL, OP_TOKEN, VIEWER_TOKEN, SHOT_DIR, CHROMIUM, REAL_ID } = process.env;
const t0 = Date.now();
const step = (m) => console.log(`step: [${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);
const errors = [];
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
// need asks the Go test to do something and waits until it says done.
async function need(what) {
  console.log('need: ' + what);
  const { value } = await lines.next();
  if (value !== 'done ' + what) throw new Error(`asked for ${what}, got ${value}`);
}
// needValue is need for a request the Go side answers with values.
async function needValue(what) {
  console.log('need: ' + what);
  const { value } = await lines.next();
  if (!value.startsWith('done ' + what + ' ')) throw new Error(`asked for ${what}, got ${value}`);
  return value.slice(('done ' + what + ' ').length).split(' ');
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});

async function signedIn(token, viewport) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport });
  const page = await ctx.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => {
    // 401s are expected: a wrong, a revoked and an expired token are part
    // of the test. ERR_NETWORK_CHANGED too: the test launch adds a network
    // interface on this host, Chromium drops open connections, and the
    // live-update stream reconnects.
    if (m.type() === 'error' && !m.text().includes('status of 401') && !m.text().includes('ERR_NETWORK_CHANGED')) errors.push('console: ' + m.text());
  });
  await page.goto(FERRY_URL + '/');
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', token);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#servers tbody tr[data-id="s-1"]');
  return { ctx, page };
}

try {
  // A wrong token is refused with a message.
  {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await ctx.newPage();
    await page.goto(FERRY_URL + '/');
    await page.fill('#token', 'fyt_nope_nope');
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('#signin-error:not([hidden])');
    check((await page.textContent('#signin-error')).includes('invalid API token'), 'bad token message');
    await ctx.close();
    step('bad token refused');
  }

  const { ctx, page } = await signedIn(OP_TOKEN, { width: 1280, height: 800 });
  step('signed in as operator; server row visible');
  check((await page.textContent('#whoname')).includes('operator'), 'role shown');

  // Live updates: the Go side moves s-1's initial sync from 40% to 80%.
  check((await page.textContent('tr[data-id="s-1"]')).includes('40%'), 'initial progress 40%');
  await need('progress');
  await page.waitForFunction(() => document.querySelector('tr[data-id="s-1"]')?.textContent.includes('80%'));
  step('progress moved live to 80%');

  // Filters and sorting.
  await page.fill('input[name=text]', 'db-');
  await page.waitForFunction(() => document.querySelectorAll('#servers tbody tr').length === 1);
  check(await page.isVisible('tr[data-id="s-2"]'), 'text filter keeps db-1');
  await page.fill('input[name=text]', '');
  await page.selectOption('select[name=replication]', 'BACKLOG');
  await page.waitForFunction(() => document.querySelectorAll('#servers tbody tr').length === 1);
  check(await page.isVisible('tr[data-id="s-3"]'), 'state filter keeps app-1');
  await page.selectOption('select[name=replication]', '');
  await page.click('th[data-sort=hostname]'); // now descending
  const order = await page.$$eval('#servers tbody tr', (rs) => rs.map((r) => r.dataset.id));
  // web-1, real-1 (the real replica), db-1, app-1.
  check(order.join() === ['s-1', REAL_ID, 's-2', 's-3'].join(), 'hostname descending order, got ' + order);
  await page.click('th[data-sort=hostname]');
  step('filtered and sorted');
  await page.screenshot({ path: `${SHOT_DIR}/servers-1280x800.png` });

  // Server page and an action.
  await page.click('tr[data-id="s-1"] a');
  await page.waitForSelector('#server-view h1');
  check((await page.textContent('#server-view h1')).includes('web-1'), 'server page title');
  check((await page.$$('#disks tbody tr')).length === 2, 'two disks');
  await page.waitForSelector('#jobs table, #jobs p');
  // Stop is destructive: dismissing the confirmation changes nothing.
  page.once('dialog', (d) => d.dismiss());
  await page.click('button[data-action="replication/stop"]');
  await page.waitForTimeout(300);
  check(await page.isVisible('button[data-action="replication/pause"]'), 'dismissed stop changed nothing');
  await page.click('button[data-action="replication/pause"]');
  await page.waitForSelector('button[data-action="replication/resume"]');
  check((await page.textContent('#flash')).includes('Pause replication: done'), 'pause flash');
  step('paused replication from the server page');
  await page.screenshot({ path: `${SHOT_DIR}/server-1280x800.png`, fullPage: true });

  await page.goto(FERRY_URL + '/#/applications');
  await page.waitForSelector('#applications tbody tr');
  check((await page.textContent('#applications')).includes('LAGGING'), 'application health shown');
  await page.screenshot({ path: `${SHOT_DIR}/applications-1280x800.png` });
  await page.goto(FERRY_URL + '/#/waves');
  await page.waitForSelector('#waves tbody tr');
  step('applications and waves pages');

  // A lagging server's chart and diagnosis: the Go side samples its
  // history while its lag grows.
  await need('history');
  await page.goto(FERRY_URL + '/#/servers/s-3');
  await page.waitForSelector('#chart polyline.lag');
  await page.waitForSelector('#diagnosis');
  check((await page.textContent('#diagnosis')).includes('Why it lags'), 'lag diagnosis shown: ' + await page.textContent('#diagnosis'));
  step('throughput and lag chart with a diagnosis');
  await page.screenshot({ path: `${SHOT_DIR}/server-lagging-1280x800.png`, fullPage: true });

  // A test launch from the dashboard of the server an agent really
  // replicates: a snapshot of its replica, booted under QEMU; then the log.
  await page.goto(FERRY_URL + '/#/servers/' + REAL_ID);
  await page.waitForSelector('button[data-launch="start-test"]');
  check(!(await page.isVisible('button[data-launch="start-cutover"]')), 'no cutover before READY_FOR_CUTOVER');
  await page.click('button[data-launch="start-test"]');
  await page.waitForFunction(() => document.querySelector('#flash')?.textContent.includes('job'));
  const jobId = (await page.textContent('#flash')).match(/job (\S+) started/)[1];
  step('test launch started from the dashboard: ' + jobId);
  await need('job-ended ' + jobId);
  await page.evaluate(() => window.dispatchEvent(new HashChangeEvent('hashchange')));
  await page.waitForSelector(`tr[data-job="${jobId}"] button`);
  await page.click(`tr[data-job="${jobId}"] button`);
  await page.waitForFunction((id) => document.querySelector(`tr[data-log="${id}"] pre`)?.textContent.includes('JOB_END'), jobId);
  const log = await page.textContent(`tr[data-log="${jobId}"] pre`);
  for (const ev of ['JOB_START', 'SNAPSHOT_START', 'SNAPSHOT_END', 'LAUNCH_START', 'JOB_END']) check(log.includes(ev), `job log has ${ev}: ` + log);
  check(!log.includes('FAIL'), 'the launch of a real replica failed: ' + log);
  check((await page.textContent(`tr[data-job="${jobId}"]`)).includes('LAUNCHED'), 'launch status LAUNCHED shown in the history');
  step('read the job log');
  await page.screenshot({ path: `${SHOT_DIR}/server-joblog-1280x800.png`, fullPage: true });

  await page.goto(FERRY_URL + '/#/usage');
  await page.waitForSelector('#usage tbody tr[data-id="s-1"]');
  step('usage page');
  await page.screenshot({ path: `${SHOT_DIR}/usage-1280x800.png` });
  await ctx.close();

  // A viewer on a phone: same data, no action buttons.
  const v = await signedIn(VIEWER_TOKEN, { width: 390, height: 844 });
  step('signed in as viewer on a phone');
  await v.page.screenshot({ path: `${SHOT_DIR}/servers-390x844.png` });
  await v.page.click('tr[data-id="s-1"] a');
  await v.page.waitForSelector('#server-view h1');
  check((await v.page.$$('button[data-action], button[data-launch]')).length === 0, 'viewer sees no action buttons');
  await v.page.screenshot({ path: `${SHOT_DIR}/server-390x844.png`, fullPage: true });
  // The launched real replica: the viewer reads its job log, still with
  // no action buttons (terminate included).
  await v.page.goto(FERRY_URL + '/#/servers/' + REAL_ID);
  await v.page.waitForSelector(`tr[data-job="${jobId}"] button`);
  await v.page.click(`tr[data-job="${jobId}"] button`);
  await v.page.waitForFunction((id) => document.querySelector(`tr[data-log="${id}"] pre`)?.textContent.includes('JOB_END'), jobId);
  check((await v.page.$$('button[data-action], button[data-launch]')).length === 0, 'viewer sees no action buttons on a launched server');
  await v.page.screenshot({ path: `${SHOT_DIR}/server-real-viewer-390x844.png`, fullPage: true });
  step('viewer sees no actions');

  // The token is revoked while the page is open: the page signs out with a message.
  await need('revoke-viewer');
  await v.page.evaluate(() => window.dispatchEvent(new HashChangeEvent('hashchange')));
  await v.page.waitForSelector('#signin:not([hidden])');
  check((await v.page.textContent('#flash')).includes('Sign in'), 'revoked token message');
  step('revoked token signs out with a message');
  await v.ctx.close();

  // A token that expires while the page is open: "session expired".
  const [secret] = await needValue('expiring-token');
  const x = await signedIn(secret, { width: 1280, height: 800 });
  await need('expire');
  // Nobody clicks: the live-update stream ends with the token and its
  // reconnect is told the session expired.
  await x.page.waitForSelector('#signin:not([hidden])');
  const flashText = await x.page.textContent('#flash');
  check(flashText.includes('Session expired, sign in again'), 'expired session message: ' + flashText);
  await x.page.screenshot({ path: `${SHOT_DIR}/session-expired-1280x800.png` });
  step('expired token: session expired, sign in again');
  await x.ctx.close();

  check(errors.length === 0, 'page errors: ' + [...new Set(errors)].slice(0, 5).join('; '));
  console.log('ok');
} catch (e) {
  console.log('FAIL: ' + e.message);
  if (errors.length) console.log('page errors: ' + [...new Set(errors)].slice(0, 5).join('; '));
  process.exitCode = 1;
} finally {
  await browser.close();
  stdin.close();
}
