document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows), asc = th.dataset.asc !== '1';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v || a.cells[col].textContent;
      var y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    th.dataset.asc = asc ? '1' : '0'; rows.forEach(function(r){ tb.appendChild(r); });
  });
});
window.addEventListener('load', function(){
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function(i){ return !(i.complete && i.naturalWidth > 0); });
  broken.forEach(function(i){ i.classList.add('broken'); i.alt = 'missing: ' + i.getAttribute('src'); });
  document.body.dataset.images = imgs.length; document.body.dataset.broken = broken.length;
  document.body.dataset.brokenSrc = broken.map(function(i){ return i.getAttribute('src'); }).join(' ');
});
