#!/bin/sh
# Summarises the orders of one day by region: order count, units and revenue.
# Input columns: order_id,date,region,product,units,unit_price
set -eu
input="$1"
day="$2"
mkdir -p out
report="out/report-$day.csv"

echo "reading $input for $day (execution $SHOAL_EXECUTION_ID, attempt $SHOAL_ATTEMPT on $SHOAL_NODE_ID)"
if [ ! -f "$input" ]; then
    echo "no such input file: $input" >&2
    exit 2
fi

awk -F, -v day="$day" -v report="$report" '
    NR == 1 { next }                       # header
    NF != 6 { bad++; print "skipping malformed line " NR ": " $0 > "/dev/stderr"; next }
    $2 != day { next }
    {
        orders[$3]++; units[$3] += $5; revenue[$3] += $5 * $6
        total_orders++; total_revenue += $5 * $6
    }
    END {
        print "region,orders,units,revenue" > report
        n = 0
        for (r in orders) { regions[++n] = r }
        # sort regions by name (insertion sort keeps this POSIX awk)
        for (i = 2; i <= n; i++) { v = regions[i]; j = i - 1; while (j > 0 && regions[j] > v) { regions[j + 1] = regions[j]; j-- } regions[j + 1] = v }
        for (i = 1; i <= n; i++) {
            r = regions[i]
            printf "%s,%d,%d,%.2f\n", r, orders[r], units[r], revenue[r] >> report
            printf "  %-8s %3d orders %5d units %10.2f\n", r, orders[r], units[r], revenue[r]
        }
        printf "total: %d orders, %.2f revenue", total_orders, total_revenue
        if (bad) printf " (%d malformed lines skipped)", bad
        printf "\n"
        if (total_orders == 0) { print "no orders on " day > "/dev/stderr"; exit 3 }
    }
' "$input"
echo "wrote $report"
