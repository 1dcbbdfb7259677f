// The Weft dashboard's script: live updates by server-sent events, without dependencies.
//
// A view's live region (an element with data-events) is replaced by the fragment the server
// renders, and escapes, whenever it changes; the tap (a table with data-tap) gains a row per
// request, newest first, and keeps the newest data-max-rows. The server's HTML is the only
// markup inserted: nothing a peer sends is ever turned into markup here.
'use strict';

// Errors are kept where tests (and anyone with a console) can read them.
window.weftErrors = window.weftErrors || [];
window.addEventListener('error', function (event) {
  var target = event.target;
  var what = event.message ||
    (target && (target.src || target.href) ? 'failed to load ' + (target.src || target.href) : 'an error');
  window.weftErrors.push(String(what));
}, true);
window.addEventListener('unhandledrejection', function (event) {
  window.weftErrors.push('unhandled rejection: ' + String(event.reason));
});

function say(element, text) {
  if (element) {
    element.textContent = text;
  }
}

// Replaces the region's content with each fragment, keeping the keyboard focus on the link
// it was on.
function followView(region) {
  var status = document.getElementById('live-status');
  var source = new EventSource(region.getAttribute('data-events'));
  source.addEventListener('fragment', function (event) {
    var active = document.activeElement;
    var href = active && region.contains(active) ? active.getAttribute('href') : null;
    region.innerHTML = event.data;
    if (href !== null) {
      var links = region.querySelectorAll('a[href]');
      for (var i = 0; i < links.length; i++) {
        if (links[i].getAttribute('href') === href) {
          links[i].focus();
          break;
        }
      }
    }
    say(status, 'Updated at ' + new Date().toLocaleTimeString() + '.');
  });
  source.addEventListener('error', function () {
    say(status, source.readyState === EventSource.CLOSED
      ? 'Updates stopped: reload the page to try again.'
      : 'Connection lost; reconnecting…');
  });
}

// Adds each request the tap sees at the top of the table.
function followTap(table) {
  var body = table.tBodies[0];
  var max = parseInt(table.getAttribute('data-max-rows'), 10) || 200;
  var status = document.getElementById('tap-status');
  var toggle = document.getElementById('tap-toggle');
  var source = null;

  function open() {
    source = new EventSource(table.getAttribute('data-tap'));
    var current = source;
    current.addEventListener('open', function () {
      say(status, 'Tapping.');
    });
    current.addEventListener('status', function (event) {
      say(status, event.data);
    });
    current.addEventListener('tap', function (event) {
      var waiting = body.querySelector('tr.waiting');
      if (waiting) {
        waiting.remove();
      }
      body.insertAdjacentHTML('afterbegin', event.data);
      while (body.rows.length > max) {
        body.deleteRow(body.rows.length - 1);
      }
    });
    current.addEventListener('error', function () {
      if (current === source) {
        say(status, current.readyState === EventSource.CLOSED
          ? 'The tap stopped: reload the page to try again.'
          : 'Reconnecting…');
      }
    });
  }

  if (toggle) {
    toggle.addEventListener('click', function () {
      if (source) {
        source.close();
        source = null;
        toggle.setAttribute('aria-pressed', 'true');
        say(status, 'Paused.');
      } else {
        toggle.setAttribute('aria-pressed', 'false');
        open();
      }
    });
  }
  open();
}

(function start() {
  var regions = document.querySelectorAll('[data-events]');
  for (var i = 0; i < regions.length; i++) {
    followView(regions[i]);
  }
  var taps = document.querySelectorAll('table[data-tap]');
  for (var j = 0; j < taps.length; j++) {
    followTap(taps[j]);
  }
})();
