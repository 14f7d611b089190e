// The board's only script: live filtering as one types (diacritics-insensitive, like the
// server's own filter), and a reload every few seconds that keeps the filters.
(function () {
  "use strict";
  var me = document.currentScript;
  var refresh = Number(me.dataset.refresh || 30) * 1000;
  var q = document.getElementById("f-q");
  var group = document.getElementById("f-group");
  var verdict = document.getElementById("f-verdict");
  var shown = document.getElementById("shown");
  if (!q || !group || !verdict) return;

  function fold(text) {
    return text.toLowerCase().replace(/đ/g, "d").normalize("NFD").replace(/[\u0300-\u036f]/g, "");
  }

  function apply() {
    var needle = fold(q.value.trim());
    var n = 0, total = 0;
    document.querySelectorAll(".group").forEach(function (section) {
      var visible = 0;
      section.querySelectorAll(".tile").forEach(function (tile) {
        total += 1;
        var ok = (!group.value || tile.dataset.group === group.value) &&
          (!verdict.value || tile.dataset.verdict === verdict.value) &&
          (!needle || tile.dataset.search.indexOf(needle) !== -1);
        tile.hidden = !ok;
        if (ok) { visible += 1; n += 1; }
      });
      section.hidden = visible === 0;
    });
    shown.textContent = me.dataset.shown.replace("{n}", n).replace("{total}", total);
    var url = new URL(window.location.href);
    [["q", q.value.trim()], ["group", group.value], ["verdict", verdict.value]].forEach(function (p) {
      if (p[1]) url.searchParams.set(p[0], p[1]); else url.searchParams.delete(p[0]);
    });
    window.history.replaceState(null, "", url);
  }

  q.addEventListener("input", apply);
  group.addEventListener("change", apply);
  verdict.addEventListener("change", apply);
  apply();
  window.setInterval(function () {
    // Not while someone is typing: the reload would eat their keystrokes.
    if (document.activeElement !== q) window.location.reload();
  }, refresh);
})();
